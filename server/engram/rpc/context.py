"""Per-call state that handlers and services read without passing it around.

grpc.aio runs every call's interceptors and handler in a fresh
``contextvars.Context`` of its own, so a value set here by an interceptor is
seen by that call's handler and by nothing else; nothing needs resetting when
the call ends.  Code that runs outside a call (tests, background jobs) can
bind a caller with :func:`bind_caller`.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from engram.services.caller import Caller


class NoCallerError(RuntimeError):
    """A handler asked for the caller of a call that was never authenticated.

    This is a server defect (an exempt method reading the caller, or code
    running outside a call), so it deliberately maps to INTERNAL.
    """

    def __init__(self) -> None:
        super().__init__("no authenticated caller is bound to this call")


_caller: ContextVar[Caller | None] = ContextVar("engram_caller", default=None)
_request_id: ContextVar[str | None] = ContextVar("engram_request_id", default=None)
_traceparent: ContextVar[str | None] = ContextVar("engram_traceparent", default=None)


def current_caller() -> Caller:
    """The authenticated caller of the current call; raises :class:`NoCallerError` if none."""
    caller = _caller.get()
    if caller is None:
        raise NoCallerError()
    return caller


def caller_or_none() -> Caller | None:
    """The caller, or None on exempt methods (health, reflection)."""
    return _caller.get()


def bind_caller(caller: Caller | None) -> Token[Caller | None]:
    """Make ``caller`` the current caller; pass the token to :func:`reset_caller` to undo."""
    return _caller.set(caller)


def reset_caller(token: Token[Caller | None]) -> None:
    _caller.reset(token)


def current_request_id() -> str | None:
    """The id of the current call, echoed to the client as ``x-request-id``.

    It doubles as the correlation id of error statuses and log entries, so a
    client that sends its own id can find the server's record of its call.
    """
    return _request_id.get()


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` the client sent, if it sent a well-formed one."""
    return _traceparent.get()


def bind_request(request_id: str, traceparent: str | None) -> None:
    """Record the current call's request id and trace parent (interceptor use)."""
    _request_id.set(request_id)
    _traceparent.set(traceparent)
