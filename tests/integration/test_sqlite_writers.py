"""Many concurrent async writers on SQLite: no "database is locked", nothing lost."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from engram.store.database import Database
from engram.store.models import Block, Organization

WRITERS = 50


@pytest.mark.parametrize("engine_kind", ["sqlite"], indirect=True)
async def test_fifty_concurrent_writers(database: Database) -> None:
    async with database.transaction(None, all_organizations=True) as session:
        org = Organization(name="busy")
        session.add(org)

    async def writer(number: int) -> None:
        # Read, then write, in one transaction: the pattern that makes two deferred
        # SQLite transactions fail to upgrade their locks.
        async with database.transaction(org.id) as session:
            count = await session.scalar(select(func.count()).select_from(Block))
            await asyncio.sleep(0)
            session.add(Block(label=f"b{number}", value=str(count)))

    await asyncio.gather(*(writer(n) for n in range(WRITERS)))
    async with database.read(org.id) as session:
        values = sorted(int(v) for v in (await session.scalars(select(Block.value))).all())
    # Serialised writers each saw every earlier commit: 0, 1, ..., 49.
    assert values == list(range(WRITERS))


@pytest.mark.parametrize("engine_kind", ["sqlite"], indirect=True)
async def test_readers_run_alongside_a_writer(database: Database) -> None:
    async with database.transaction(None, all_organizations=True) as session:
        org = Organization(name="wal")
        session.add(org)
    async with database.transaction(org.id) as writer:
        writer.add(Block(label="pending"))
        await writer.flush()
        # WAL: a reader is not blocked by the open write transaction and sees the last commit.
        async with database.read(org.id) as reader:
            assert await reader.scalar(select(func.count()).select_from(Block)) == 0
