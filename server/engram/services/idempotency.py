"""Idempotent creates (AIP-155): a retried request id returns the first result.

Meshes retry a call that failed fast with UNAVAILABLE, and clients retry on
timeouts; neither may create a second resource.  The request id is recorded
in the same transaction as the resource, so either both exist or neither.
Two concurrent calls with one id race on the key's primary key: the loser's
transaction rolls back and it returns the winner's resource.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from engram.services.errors import InvalidArgumentError
from engram.store.database import Database
from engram.store.errors import UniqueViolationError
from engram.store.models import IdempotencyKey
from engram.store.types import utc_now

# How long a request id is remembered.
RETENTION = timedelta(hours=24)
KEY_CONSTRAINT = "pk_idempotency_keys"


def check_request_id(request_id: str, field: str = "request_id") -> None:
    if not request_id:
        return
    try:
        uuid.UUID(request_id)
    except ValueError as error:
        raise InvalidArgumentError.field(field, "must be a UUID (for example a UUID4)") from error


async def _remembered(session: AsyncSession, method: str, request_id: str) -> str | None:
    found = await session.scalar(
        select(IdempotencyKey.resource_id).where(
            IdempotencyKey.method == method,
            IdempotencyKey.request_id == request_id,
            IdempotencyKey.created_at > utc_now() - RETENTION,
        )
    )
    return str(found) if found is not None else None


async def create_once(
    database: Database,
    organization_id: str,
    method: str,
    request_id: str,
    create: Callable[[AsyncSession], Awaitable[str]],
) -> str:
    """Run ``create`` (which returns the new resource's id) at most once per request id."""
    check_request_id(request_id)
    if not request_id:
        return await database.run_transaction(create, organization_id)

    async def create_and_remember(session: AsyncSession) -> str:
        existing = await _remembered(session, method, request_id)
        if existing is not None:
            return existing
        # An expired record of the same id may linger until it is purged.
        await session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.method == method, IdempotencyKey.request_id == request_id
            )
        )
        resource_id = await create(session)
        session.add(IdempotencyKey(method=method, request_id=request_id, resource_id=resource_id))
        return resource_id

    try:
        return await database.run_transaction(create_and_remember, organization_id)
    except UniqueViolationError as error:
        if error.constraint != KEY_CONSTRAINT:
            raise
        async with database.read(organization_id) as session:
            existing = await _remembered(session, method, request_id)
        if existing is None:
            raise
        return existing
