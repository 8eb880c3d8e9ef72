"""Errors the services raise for requests they refuse.

They describe what is wrong in domain terms (which field, which rule); the
gRPC layer maps them, and the store's errors, to status codes and
``google.rpc`` details in one place (:mod:`engram.rpc.errors`).  Each carries
a stable ``reason`` from the ``engram.v1.ErrorReason`` catalog.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (``agent.display_name``) and why."""

    field: str
    description: str


class ServiceError(Exception):
    """Base of the errors a service raises on purpose."""

    reason = "INVALID_ARGUMENT"
    # Extra ``ErrorInfo`` metadata (what a client needs to act, for example the
    # run and the oldest event still kept); most errors have none.
    info: Mapping[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(ServiceError):
    """The request itself is malformed; retrying it unchanged will fail again."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation], message: str | None = None) -> None:
        self.violations = tuple(violations)
        summary = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(summary)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgumentError:
        return cls([FieldViolation(field, description)])


class FailedPreconditionError(ServiceError):
    """The request is well formed but the system is not in a state that allows it."""

    reason = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, subject: str = "", violation_type: str = "STATE") -> None:
        super().__init__(message)
        self.subject = subject
        self.violation_type = violation_type


class EtagMismatchError(ServiceError):
    """The caller's etag is stale: someone else changed the resource since."""

    reason = "CONCURRENT_UPDATE"

    def __init__(self, resource_name: str) -> None:
        super().__init__(
            f"{resource_name} changed since it was read (etag mismatch); read it again and retry"
        )
        self.resource_name = resource_name


class UnauthenticatedError(ServiceError):
    """No credentials, or credentials that are not valid."""

    reason = "UNAUTHENTICATED"


class PermissionDeniedError(ServiceError):
    """Valid credentials that do not allow this call."""

    reason = "PERMISSION_DENIED"


class ShuttingDownError(ServiceError):
    """The server is draining: it starts no new work, and the request changed nothing."""

    reason = "SHUTTING_DOWN"
