"""Small rules every resource service shares: etags, loading by id, names and descriptions."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from engram.services.errors import EtagMismatchError, FieldViolation
from engram.store.errors import NotFoundError
from engram.store.models import Base

ModelT = TypeVar("ModelT", bound=Base)


def etag_of(version: int) -> str:
    """The etag of a row at ``version``; opaque to clients."""
    return f'"{version}"'


def check_etag(given: str, version: int, resource_name: str) -> None:
    """Refuse a write whose etag is stale. An empty etag means "no check".

    The surrounding quotes are optional, so that a shell user can send
    ``"etag": "2"`` instead of escaping ``"\\"2\\""``; the value compared is the same.
    """
    if given and given.strip('"') != str(version):
        raise EtagMismatchError(resource_name)


async def load(
    session: AsyncSession,
    model: type[ModelT],
    resource_id: str,
    resource: str,
    *,
    lock: bool = False,
) -> ModelT:
    """The row with ``resource_id`` in the session's organization, or NotFoundError."""
    row = await session.get(model, resource_id, with_for_update=lock or None)
    if row is None:
        raise NotFoundError(resource, resource_id)
    return row


def clean_display_name(
    clean: dict[str, Any],
    field: str,
    limit: int,
    violations: list[FieldViolation],
    *,
    creating: bool,
) -> None:
    """Trim ``clean["display_name"]`` in place; a missing or too long one is a violation.

    Checked when creating (it is required then) or when the update sets it.
    """
    if "display_name" not in clean and not creating:
        return
    name = str(clean.get("display_name", "")).strip()
    if not name:
        violations.append(FieldViolation(field, "is required"))
    elif len(name) > limit:
        violations.append(FieldViolation(field, f"must be at most {limit} characters"))
    clean["display_name"] = name


def clean_description(clean: dict[str, Any]) -> None:
    """A description is free text, but never with NUL characters (PostgreSQL refuses them)."""
    if "description" in clean:
        clean["description"] = str(clean["description"] or "").replace("\x00", "")
