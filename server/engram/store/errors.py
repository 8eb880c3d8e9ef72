"""The typed errors the store raises, identical on PostgreSQL and SQLite.

Each class carries a stable ``reason`` (an entry of the ``engram.v1.ErrorReason``
catalog) so that the API layer can turn it into a precise gRPC status without
looking at driver exceptions.  Messages name the table, constraint or field
at fault and never include row values, which may be secret.
"""

from __future__ import annotations

from collections.abc import Sequence


class StoreError(Exception):
    """Base of every error the store raises on purpose."""

    reason = "DATABASE_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(StoreError):
    """No row with this id exists in the caller's organization."""

    reason = "NOT_FOUND"

    def __init__(self, resource: str, resource_id: str) -> None:
        super().__init__(f"{resource} {resource_id!r} was not found")
        self.resource = resource
        self.resource_id = resource_id


class ConstraintViolationError(StoreError):
    """A write broke an integrity rule of the schema."""

    reason = "CONSTRAINT_VIOLATION"

    def __init__(
        self,
        message: str,
        *,
        table: str | None,
        constraint: str | None,
        columns: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.table = table
        self.constraint = constraint
        self.columns = tuple(columns)


class UniqueViolationError(ConstraintViolationError):
    reason = "ALREADY_EXISTS"


class ForeignKeyViolationError(ConstraintViolationError):
    reason = "REFERENCED_RESOURCE_MISSING"


class NotNullViolationError(ConstraintViolationError):
    reason = "FIELD_REQUIRED"


class ConcurrentUpdateError(StoreError):
    """The row changed since it was read (optimistic concurrency)."""

    reason = "CONCURRENT_UPDATE"


class LockNotAvailableError(StoreError):
    """Another transaction holds a lock this one needed and would not wait."""

    reason = "LOCK_NOT_AVAILABLE"


class DeadlockError(StoreError):
    """Transactions waited on each other; safe to retry from the start."""

    reason = "DEADLOCK"


class DatabaseTimeoutError(StoreError):
    """A statement ran past its timeout, or no pooled connection came in time."""

    reason = "DATABASE_TIMEOUT"

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind  # "statement" or "pool"


class DatabaseUnavailableError(StoreError):
    """The database could not be reached."""

    reason = "DATABASE_UNAVAILABLE"


class OrganizationScopeError(StoreError):
    """Code tried to touch organization-owned rows outside an organization scope.

    This is a programming error, never a client's: it exists so that a query
    that forgot its tenant fails loudly instead of reading every tenant.
    """

    reason = "INTERNAL_SCOPE_ERROR"


# Every reason above; the contract test checks each one is in the proto catalog.
ALL_REASONS = frozenset(
    cls.reason
    for cls in (
        StoreError,
        NotFoundError,
        ConstraintViolationError,
        UniqueViolationError,
        ForeignKeyViolationError,
        NotNullViolationError,
        ConcurrentUpdateError,
        LockNotAvailableError,
        DeadlockError,
        DatabaseTimeoutError,
        DatabaseUnavailableError,
        OrganizationScopeError,
    )
)
