"""The interceptor chain every Engram call passes through.

In order, for each call:

1. **request context**: take the client's ``x-request-id`` (or make one) and
   its W3C ``traceparent``, bind them to the call, and echo the id back in the
   trailing metadata;
2. **authentication**: resolve the caller from ``authorization: Bearer <key>``
   (health, reflection and channelz are exempt);
3. **error mapping**: turn any exception into one ``google.rpc.Status``
   (:mod:`engram.rpc.errors`) sent with the standard ``grpc-status-details-bin``
   trailer, and log it with the request id as correlation id;
4. **metrics**: record the call's duration and final status code.

The stages run inside one wrapper per method rather than as four
``grpc.aio.ServerInterceptor`` objects: each interceptor layer costs about 5%
of peak unary throughput (``grpc-conventions.md`` §3.1), and an exception
mapper or a timer must wrap the handler's behaviour anyway, which
``intercept_service`` alone cannot do.  The wrappers are built once per
method when the services register (:class:`MethodTable`), so grpc runs no
interceptor at all and a call allocates nothing for the chain itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

import grpc
from opentelemetry.metrics import Meter

from engram.rpc.context import bind_caller, bind_request, current_request_id
from engram.rpc.errors import MappedError, OverloadedError, map_error
from engram.services.caller import Caller

logger = logging.getLogger(__name__)

# Methods any client may call without credentials: probes and tooling.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.", "/grpc.channelz.")

REQUEST_ID_HEADER = "x-request-id"
# A client's own request id is used only when it is short and plain, so that
# it cannot smuggle anything into logs or trailers.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)

_OK = grpc.StatusCode.OK.value[0]
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]
_UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


class Authenticator(Protocol):
    """What the chain needs to resolve a caller; :class:`~engram.rpc.application.Application`."""

    async def authenticate(self, bearer_token: str | None, method: str) -> Caller: ...


class _CallMetrics:
    """``rpc.server.duration`` per method and status, following OpenTelemetry's RPC conventions."""

    def __init__(self, meter: Meter) -> None:
        self._duration = meter.create_histogram(
            "rpc.server.duration",
            unit="ms",
            description="Time to handle one gRPC call, by method and status code.",
        )
        self._attributes: dict[tuple[str, int], dict[str, str | int]] = {}

    def record(self, method: str, code: int, started: float) -> None:
        key = (method, code)
        attributes = self._attributes.get(key)
        if attributes is None:
            service, _, name = method.lstrip("/").partition("/")
            attributes = {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": name,
                "rpc.grpc.status_code": code,
            }
            self._attributes[key] = attributes
        self._duration.record((time.perf_counter() - started) * 1000.0, attributes)


# A call's invocation metadata, as grpc.aio hands it over.
Metadata = Iterable[tuple[str, str | bytes]]


def _metadata_value(metadata: Metadata | None, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value if isinstance(value, str) else None
    return None


def new_request_id() -> str:
    """32 random hex digits: as unique as a uuid4's hex, at a fifth of its cost."""
    return secrets.token_hex(16)


def _request_context(
    context: grpc.aio.ServicerContext, metadata: Metadata | None
) -> tuple[str, str | None]:
    """Bind the call's request id and trace parent; returns them."""
    offered = _metadata_value(metadata, REQUEST_ID_HEADER)
    request_id = offered if offered and _CLIENT_REQUEST_ID.match(offered) else new_request_id()
    traceparent = _metadata_value(metadata, "traceparent")
    if traceparent is not None and not _TRACEPARENT.match(traceparent):
        traceparent = None
    bind_request(request_id, traceparent)
    context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
    return request_id, traceparent


def bearer_token(metadata: Metadata | None) -> str | None:
    """The key in ``authorization: Bearer <key>``, or None when the header is absent.

    A present but malformed header yields "" so that it fails authentication
    instead of falling back to the local mode's anonymous caller.
    """
    header = _metadata_value(metadata, "authorization")
    if header is None:
        return None
    match = _BEARER.match(header)
    return match.group(1) if match else ""


class _Chain:
    """The stages shared by every wrapped method."""

    def __init__(
        self, authenticator: Authenticator, meter: Meter | None, max_in_flight: int
    ) -> None:
        self.authenticator = authenticator
        self.metrics = _CallMetrics(meter) if meter is not None else None
        self.max_in_flight = max_in_flight
        # Calls of wrapped methods now running (this one included, once entered).
        self.in_flight = 0

    async def enter(self, method: str, context: grpc.aio.ServicerContext) -> str:
        """Bind the request context and the caller; returns the request id.

        Sheds load first: past ``max_in_flight`` calls the call fails at once
        with OVERLOADED (RESOURCE_EXHAUSTED and RetryInfo) instead of queueing
        behind the others.  Health and reflection are never wrapped, so probes
        still answer while the server sheds.
        """
        metadata = context.invocation_metadata()
        request_id, _ = _request_context(context, metadata)
        if self.max_in_flight and self.in_flight > self.max_in_flight:
            raise OverloadedError()
        caller = await self.authenticator.authenticate(bearer_token(metadata), method)
        bind_caller(caller)
        return request_id

    def report(self, error: Exception, method: str, request_id: str) -> MappedError:
        """Map ``error`` to its status and log it, with the request id as correlation id."""
        mapped = map_error(error, correlation_id=request_id)
        if mapped.server_fault:
            logger.error("%s failed [request %s]", method, request_id, exc_info=error)
        else:
            logger.log(
                mapped.log_level,
                "%s refused with %s: %s [request %s]",
                method,
                mapped.reason,
                mapped.status.message,
                request_id,
            )
        return mapped


async def _abort(mapped: MappedError, request_id: str, context: grpc.aio.ServicerContext) -> None:
    """End the call with ``mapped``'s status in the standard details trailer (always raises)."""
    status = mapped.status
    await context.abort(
        _STATUS_CODES.get(status.code, grpc.StatusCode.UNKNOWN),
        status.message,
        trailing_metadata=(
            ("grpc-status-details-bin", status.SerializeToString()),
            (REQUEST_ID_HEADER, request_id),
        ),
    )


def _aborted_code(context: grpc.aio.ServicerContext) -> int:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return int(code.value[0])
    return int(code) if isinstance(code, int) else _UNKNOWN


def _outcome(
    chain: _Chain,
    error: BaseException,
    method: str,
    request_id: str,
    context: grpc.aio.ServicerContext,
) -> tuple[int, MappedError | None, str]:
    """How a failed call ends: its status code, the rich status to send, and its request id.

    Cancellation and a handler's own abort pass through unchanged (no status
    to send); any other exception is one of ours to map and send.
    """
    if isinstance(error, asyncio.CancelledError):
        return _CANCELLED, None, request_id
    if isinstance(error, grpc.aio.AbortError):
        return _aborted_code(context), None, request_id
    if not isinstance(error, Exception):
        return _OK, None, request_id  # a stream the client stopped reading (GeneratorExit)
    # A call refused while entering (auth, load shedding) still reports its own id.
    request_id = request_id or current_request_id() or new_request_id()
    mapped = chain.report(error, method, request_id)
    return mapped.status.code, mapped, request_id


def _wrap_unary_response(
    chain: _Chain, method: str, behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = _OK
        request_id = ""
        chain.in_flight += 1
        try:
            request_id = await chain.enter(method, context)
            return await behaviour(request, context)
        except BaseException as error:
            code, mapped, request_id = _outcome(chain, error, method, request_id, context)
            if mapped is not None:
                await _abort(mapped, request_id, context)
            raise
        finally:
            chain.in_flight -= 1
            if chain.metrics is not None:
                chain.metrics.record(method, code, started)

    return handle


def _wrap_stream_response(
    chain: _Chain, method: str, behaviour: Callable[[Any, grpc.aio.ServicerContext], Any]
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.perf_counter()
        code = _OK
        request_id = ""
        chain.in_flight += 1
        try:
            request_id = await chain.enter(method, context)
            responses = behaviour(request, context)
            if hasattr(responses, "__aiter__"):
                async for response in responses:
                    yield response
            else:
                # A handler that writes with context.write() returns a coroutine.
                await responses
        except BaseException as error:
            code, mapped, request_id = _outcome(chain, error, method, request_id, context)
            if mapped is None:
                raise
            await _abort(mapped, request_id, context)
        finally:
            chain.in_flight -= 1
            if chain.metrics is not None:
                chain.metrics.record(method, code, started)

    return handle


class MethodTable(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no stubs
    """Every method of the server in one dict, the Engram ones wrapped in the chain.

    The generated ``add_*Servicer_to_server(servicer, server)`` functions are
    handed this table instead of the server: each gives it its method handlers
    through :meth:`add_registered_method_handlers`, and the server receives
    the table as its one generic handler (:meth:`service` is a dict lookup).

    Two costs of the usual route are avoided.  grpc.aio's accept loop keeps
    one pending request per *registered* method and waits on all of them
    (``asyncio.wait``) before every call, so the ~80 registered methods of
    Engram's services cost ~30 us of CPU per call (``scripts/bench-unary``);
    a server with only generic handlers waits on one.  And a
    ``grpc.aio.ServerInterceptor`` runs an awaited lookup per call, whereas
    here each method's wrapped handler is built once, at registration.
    """

    def __init__(self, chain: _Chain | None) -> None:
        self._chain = chain
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Ignored: generated code gives the same handlers to the method below.

        :meth:`require` fails the start if a service's handlers never arrived
        that way, so a registration cannot be lost silently.
        """

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            chain = None if method.startswith(EXEMPT_PREFIXES) else self._chain
            self._handlers[method] = handler if chain is None else _wrap(chain, method, handler)

    def require(self, services: Iterable[str]) -> None:
        """Raise unless every one of ``services`` has its methods in the table."""
        known = {method.split("/")[1] for method in self._handlers}
        missing = sorted(set(services) - known)
        if missing:
            raise RuntimeError(f"no method handlers were registered for {', '.join(missing)}")

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(details.method)


def _wrap(chain: _Chain, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary_response(chain, method, handler.unary_unary), **serializers
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary_response(chain, method, handler.stream_unary), **serializers
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream_response(chain, method, handler.unary_stream), **serializers
        )
    return grpc.stream_stream_rpc_method_handler(
        _wrap_stream_response(chain, method, handler.stream_stream), **serializers
    )


def build_method_table(
    authenticator: Authenticator | None, meter: Meter | None, *, max_in_flight: int = 0
) -> MethodTable:
    """The server's method table; with ``authenticator``, Engram methods run the chain.

    ``meter`` None records no call metrics (nothing would export them);
    ``max_in_flight`` 0 sheds no load.
    """
    if authenticator is None:
        return MethodTable(None)
    return MethodTable(_Chain(authenticator, meter, max_in_flight))


__all__ = [
    "EXEMPT_PREFIXES",
    "REQUEST_ID_HEADER",
    "Authenticator",
    "MethodTable",
    "bearer_token",
    "build_method_table",
]
