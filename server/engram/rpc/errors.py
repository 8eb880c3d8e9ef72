"""Turning the errors services and the store raise into ``google.rpc.Status`` values.

This is the only module that knows how a domain error looks on the wire, so
that every RPC reports the same failure the same way.  Each status carries an
``ErrorInfo`` whose ``reason`` comes from the ``engram.v1.ErrorReason``
catalog (``proto/engram/v1/error_reason.proto``) and whose gRPC code is the
one the catalog promises; clients branch on the reason, never on the text.

Two rules matter more than the rest:

* a client's mistake is never INTERNAL: it maps to a code that tells the
  client what to change (or that retrying helps);
* a server fault never leaks its text: the message is a generic one holding a
  correlation id, which also appears in ``ErrorInfo`` metadata and in the
  server's log entry, so support can find the traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from engram.adapters.event_log.base import EventLogUnavailableError
from engram.adapters.llm.errors import ProviderError, ProviderRateLimitedError
from engram.secrets.errors import SecretsError
from engram.services.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ServiceError,
)
from engram.store.errors import (
    ConstraintViolationError,
    DatabaseTimeoutError,
    NotFoundError,
    NotNullViolationError,
    StoreError,
)

ERROR_DOMAIN = "engram.dev"

# How long clients should wait before retrying a transient failure.  One
# second is long enough for a lock holder or a deadlock partner to finish and
# short enough that an interactive agent turn does not stall noticeably.
RETRY_DELAY_SECONDS = 1

INTERNAL_REASON = "INTERNAL"
INVALID_TOOL_SOURCE = "INVALID_TOOL_SOURCE"
TOOL_SOURCE_FIELD = "tool.source_code"

MessageT = TypeVar("MessageT", bound=Message)


class OverloadedError(Exception):
    """Raised by a load-shedding layer when the server is at its concurrent-call limit.

    It lives here, next to its mapping, because only the RPC runtime sheds load.
    """

    reason = "OVERLOADED"

    def __init__(self, message: str = "the server is at its concurrent-call limit; retry") -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class _Rule:
    """How one catalog reason travels: its gRPC code, whether to advise a retry, how to log."""

    code: int
    retry: bool = False
    log_level: int = logging.DEBUG

    @property
    def server_fault(self) -> bool:
        return bool(self.code == code_pb2.INTERNAL)


# One entry per catalog reason the server can produce.  Client mistakes log at
# DEBUG (they are the client's to fix and would flood the log at INFO under
# load); conditions an operator must act on log at WARNING; defects at ERROR.
_RULES: Mapping[str, _Rule] = {
    "NOT_FOUND": _Rule(code_pb2.NOT_FOUND),
    "ALREADY_EXISTS": _Rule(code_pb2.ALREADY_EXISTS),
    "REFERENCED_RESOURCE_MISSING": _Rule(code_pb2.FAILED_PRECONDITION),
    "FIELD_REQUIRED": _Rule(code_pb2.INVALID_ARGUMENT),
    "CONSTRAINT_VIOLATION": _Rule(code_pb2.FAILED_PRECONDITION),
    "CONCURRENT_UPDATE": _Rule(code_pb2.ABORTED),
    "LOCK_NOT_AVAILABLE": _Rule(code_pb2.ABORTED, retry=True),
    "DEADLOCK": _Rule(code_pb2.ABORTED, retry=True, log_level=logging.INFO),
    "DATABASE_TIMEOUT": _Rule(code_pb2.UNAVAILABLE, retry=True, log_level=logging.WARNING),
    "DATABASE_UNAVAILABLE": _Rule(code_pb2.UNAVAILABLE, retry=True, log_level=logging.WARNING),
    "DATABASE_ERROR": _Rule(code_pb2.INTERNAL, log_level=logging.ERROR),
    "ENCRYPTION_KEY_MISSING": _Rule(code_pb2.FAILED_PRECONDITION, log_level=logging.WARNING),
    "ENCRYPTION_KEY_UNKNOWN": _Rule(code_pb2.FAILED_PRECONDITION, log_level=logging.WARNING),
    "SECRET_DECRYPTION_FAILED": _Rule(code_pb2.DATA_LOSS, log_level=logging.WARNING),
    "INTERNAL_SCOPE_ERROR": _Rule(code_pb2.INTERNAL, log_level=logging.ERROR),
    "INVALID_ARGUMENT": _Rule(code_pb2.INVALID_ARGUMENT),
    "FAILED_PRECONDITION": _Rule(code_pb2.FAILED_PRECONDITION),
    "UNAUTHENTICATED": _Rule(code_pb2.UNAUTHENTICATED),
    "PERMISSION_DENIED": _Rule(code_pb2.PERMISSION_DENIED),
    INVALID_TOOL_SOURCE: _Rule(code_pb2.INVALID_ARGUMENT),
    "INVALID_PAGE_TOKEN": _Rule(code_pb2.INVALID_ARGUMENT),
    INTERNAL_REASON: _Rule(code_pb2.INTERNAL, log_level=logging.ERROR),
    "OVERLOADED": _Rule(code_pb2.RESOURCE_EXHAUSTED, retry=True, log_level=logging.INFO),
    "PROVIDER_AUTH_FAILED": _Rule(code_pb2.FAILED_PRECONDITION, log_level=logging.WARNING),
    "PROVIDER_RATE_LIMITED": _Rule(code_pb2.RESOURCE_EXHAUSTED, retry=True, log_level=logging.INFO),
    "PROVIDER_UNAVAILABLE": _Rule(code_pb2.UNAVAILABLE, retry=True, log_level=logging.WARNING),
    "PROVIDER_TIMEOUT": _Rule(code_pb2.DEADLINE_EXCEEDED, retry=True, log_level=logging.WARNING),
    "PROVIDER_REJECTED_REQUEST": _Rule(code_pb2.FAILED_PRECONDITION, log_level=logging.WARNING),
    "CONTEXT_WINDOW_EXCEEDED": _Rule(code_pb2.FAILED_PRECONDITION, log_level=logging.INFO),
    "PROVIDER_NOT_CONFIGURED": _Rule(code_pb2.FAILED_PRECONDITION),
    "INVALID_PROVIDER_RESPONSE": _Rule(code_pb2.UNAVAILABLE, retry=True, log_level=logging.WARNING),
    "UPLOAD_TOO_LARGE": _Rule(code_pb2.INVALID_ARGUMENT),
    "UNSUPPORTED_MEDIA_TYPE": _Rule(code_pb2.INVALID_ARGUMENT),
    "RUN_EVENTS_EXPIRED": _Rule(code_pb2.FAILED_PRECONDITION),
    "RUN_POSITION_UNKNOWN": _Rule(code_pb2.FAILED_PRECONDITION),
    "RUN_ALREADY_ENDED": _Rule(code_pb2.FAILED_PRECONDITION),
    "SHUTTING_DOWN": _Rule(code_pb2.UNAVAILABLE, retry=True, log_level=logging.INFO),
    "EVENT_LOG_UNAVAILABLE": _Rule(code_pb2.UNAVAILABLE, retry=True, log_level=logging.WARNING),
}

MAPPED_REASONS = frozenset(_RULES)
"""Every catalog reason :func:`map_error` can put in an ``ErrorInfo``."""

_UNEXPECTED = _RULES[INTERNAL_REASON]
_KNOWN_ERRORS = (
    StoreError,
    SecretsError,
    ServiceError,
    OverloadedError,
    ProviderError,
    EventLogUnavailableError,
)


@dataclass(frozen=True, slots=True)
class MappedError:
    """A status ready to send, and how loudly the server should log the failure."""

    status: status_pb2.Status
    reason: str
    log_level: int

    @property
    def server_fault(self) -> bool:
        """True for defects and unexpected failures: log them with their traceback."""
        return bool(self.status.code == code_pb2.INTERNAL)


def _reason_of_error(error: BaseException) -> str | None:
    """The catalog reason of an error the code raised on purpose; None for anything else.

    Only our own error families are trusted: third-party exceptions often have
    a ``reason`` attribute of their own (``urllib.error.URLError`` does), and
    taking it at face value could dress a defect up as a client mistake.  The
    tool-schema error is recognised by shape so this module does not depend on
    the tool parser.
    """
    if isinstance(error, _KNOWN_ERRORS):
        reason = getattr(error, "reason", None)
    elif getattr(error, "reason", None) == INVALID_TOOL_SOURCE and hasattr(error, "field"):
        reason = INVALID_TOOL_SOURCE
    else:
        return None
    return reason if isinstance(reason, str) and reason in _RULES else None


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _constraint_metadata(error: ConstraintViolationError) -> dict[str, str]:
    metadata: dict[str, str] = {}
    if error.constraint:
        metadata["constraint"] = error.constraint
    if error.columns:
        metadata["fields"] = ",".join(error.columns)
    return metadata


def _bad_request(violations: list[tuple[str, str]]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )


def _details_for(
    error: BaseException, reason: str, message: str
) -> tuple[dict[str, str], list[Message]]:
    """The ``ErrorInfo`` metadata and the extra typed details for one known error."""
    metadata: dict[str, str] = {}
    extra: list[Message] = []
    if isinstance(error, NotFoundError):
        metadata = {"resource": error.resource, "id": error.resource_id}
        extra.append(
            error_details_pb2.ResourceInfo(
                resource_type=error.resource,
                resource_name=error.resource_id,
                description=message,
            )
        )
    elif isinstance(error, ConstraintViolationError):
        metadata = _constraint_metadata(error)
        if isinstance(error, NotNullViolationError):
            fields = error.columns or ((error.table or "",))
            extra.append(_bad_request([(column, "is required") for column in fields]))
        elif reason == "REFERENCED_RESOURCE_MISSING":
            subject = ",".join(error.columns) or error.constraint or error.table or ""
            extra.append(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=reason, subject=subject, description=message
                        )
                    ]
                )
            )
    elif isinstance(error, InvalidArgumentError):
        extra.append(_bad_request([(v.field, v.description) for v in error.violations]))
    elif isinstance(error, FailedPreconditionError):
        extra.append(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=error.violation_type, subject=error.subject, description=message
                    )
                ]
            )
        )
    elif isinstance(error, DatabaseTimeoutError):
        metadata = {"kind": error.kind}
    elif reason == "ENCRYPTION_KEY_UNKNOWN":
        metadata = {"key_id": str(getattr(error, "key_id", ""))}
    elif reason == INVALID_TOOL_SOURCE:
        field = str(getattr(error, "field", "") or "")
        metadata = {"field": field}
        # The catalog promises the violation on the request field, whatever
        # part of the source (docstring, annotation) the parser blamed.
        extra.append(_bad_request([(TOOL_SOURCE_FIELD, message)]))
    elif isinstance(error, ProviderError):
        metadata = {"provider": error.provider}
    elif reason == "CONCURRENT_UPDATE" and hasattr(error, "resource_name"):
        metadata = {"resource": str(error.resource_name)}
    if isinstance(error, ServiceError):
        metadata.update(error.info)
    return metadata, extra


def _retry_delay(error: BaseException) -> duration_pb2.Duration:
    """The provider's own advice when it gave one, else our default delay."""
    delay = duration_pb2.Duration(seconds=RETRY_DELAY_SECONDS)
    if isinstance(error, ProviderRateLimitedError) and error.retry_after:
        delay.FromNanoseconds(int(error.retry_after * 1e9))
    return delay


def _internal_message(correlation_id: str) -> str:
    return f"internal error; correlation id {correlation_id}"


def map_error(error: BaseException, *, correlation_id: str) -> MappedError:
    """Map ``error`` to its status, and say how the failure should be logged.

    Anything that is not one of our deliberate errors is a server fault and
    becomes INTERNAL whose message reveals nothing but the correlation id.
    """
    reason = _reason_of_error(error)
    rule = _RULES[reason] if reason is not None else _UNEXPECTED
    if reason is None or rule.server_fault:
        # Store errors with an INTERNAL code may wrap driver text that names
        # rows or values; keep it for the log only.
        reason = reason or INTERNAL_REASON
        message = _internal_message(correlation_id)
        metadata = {"correlation_id": correlation_id}
        extra: list[Message] = []
    else:
        message = str(error) or reason.replace("_", " ").lower()
        metadata, extra = _details_for(error, reason, message)
    if rule.retry:
        extra.append(error_details_pb2.RetryInfo(retry_delay=_retry_delay(error)))
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    status = status_pb2.Status(
        code=rule.code,
        message=message,
        details=[_pack(info), *(_pack(detail) for detail in extra)],
    )
    return MappedError(status=status, reason=reason, log_level=rule.log_level)


def unpack_detail(
    status: status_pb2.Status, message_type: Callable[[], MessageT]
) -> MessageT | None:
    """The first detail of ``status`` of type ``message_type``, or None when it has none."""
    for detail in status.details:
        candidate = message_type()
        if detail.Is(candidate.DESCRIPTOR):
            detail.Unpack(candidate)
            return candidate
    return None


def reason_of(status: status_pb2.Status) -> str:
    """The ``ErrorInfo`` reason of ``status`` ("" when it carries no ErrorInfo)."""
    info = unpack_detail(status, error_details_pb2.ErrorInfo)
    return info.reason if info is not None else ""
