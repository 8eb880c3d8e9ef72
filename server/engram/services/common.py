"""Small rules every resource service shares: etags and loading by id."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from engram.services.errors import EtagMismatchError
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
