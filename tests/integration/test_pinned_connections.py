"""Pinned connections for one-statement reads: reuse, overflow, discard, recycle, close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from engram.config.database_choice import choose_database
from engram.config.settings import Settings
from engram.store.database import Database
from engram.store.engine import create_engine
from engram.store.pinned import MOST_PINNED, PinnedConnections
from engram.store.sqlite import create_sqlite_engine, run_each_on_thread


class Checkouts:
    """Counts the pool's checkouts of ``engine``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        self._pool = engine.sync_engine.pool
        event.listen(self._pool, "checkout", self._seen)

    def _seen(self, *_: Any) -> None:
        self.count += 1

    def stop(self) -> None:
        event.remove(self._pool, "checkout", self._seen)


@pytest.fixture
async def checkouts(database: Database) -> AsyncIterator[Checkouts]:
    counter = Checkouts(database.engine)
    yield counter
    counter.stop()


async def _select_one(database: Database, connection: Any) -> int:
    """Run ``SELECT 1`` on ``connection``'s driver, as the agent reader does."""
    if database.choice.is_sqlite:
        (rows,) = await run_each_on_thread(connection.dbapi_connection, "SELECT 1", [[]])
        return int(rows[0][0])
    return int(await connection.driver_connection.fetchval("SELECT 1"))


async def _read(database: Database, pinned: PinnedConnections) -> Any:
    """One statement on a connection from ``pinned``; returns the driver connection used."""
    async with pinned.connection() as connection:
        assert await _select_one(database, connection) == 1
        return connection.driver_connection


@contextlib.asynccontextmanager
async def holding(pinned: PinnedConnections) -> AsyncIterator[None]:
    """Keep one of ``pinned``'s connections in use by another task for the block."""
    entered = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with pinned.connection():
            entered.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await entered.wait()
    try:
        yield
    finally:
        release.set()
        await holder


def _checked_out(database: Database) -> int:
    return int(database.engine.sync_engine.pool.checkedout())  # type: ignore[attr-defined]


async def test_reads_reuse_one_pinned_connection(database: Database, checkouts: Checkouts) -> None:
    pinned = database.pinned
    assert pinned.size == min(MOST_PINNED, database.engine.sync_engine.pool.size() // 4)  # type: ignore[attr-defined]
    assert pinned.size >= 1
    first = await _read(database, pinned)
    for _ in range(20):
        assert await _read(database, pinned) is first
    assert checkouts.count == 1
    assert _checked_out(database) == 1  # held between reads: that is the point


async def test_reads_beyond_the_pinned_ones_use_the_pool(
    database: Database, checkouts: Checkouts
) -> None:
    pinned = PinnedConnections(database.engine, 1, None)
    async with holding(pinned):
        assert _checked_out(database) == 1
        # The only pinned connection is busy: the read neither waits nor fails.
        await asyncio.wait_for(_read(database, pinned), timeout=10)
        assert checkouts.count == 2
        assert _checked_out(database) == 1  # the overflow connection went back to the pool
    await pinned.close()
    assert _checked_out(database) == 0


async def test_a_failed_read_discards_its_connection(database: Database) -> None:
    pinned = PinnedConnections(database.engine, 1, None)
    first = await _read(database, pinned)
    with pytest.raises(RuntimeError):
        async with pinned.connection():
            raise RuntimeError("the statement failed")
    assert _checked_out(database) == 0  # discarded, not kept
    second = await _read(database, pinned)
    assert second is not first
    await pinned.close()


async def test_a_cancelled_read_keeps_its_place(database: Database) -> None:
    pinned = PinnedConnections(database.engine, 1, None)
    entered = asyncio.Event()

    async def stuck() -> None:
        async with pinned.connection():
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(stuck())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _checked_out(database) == 0
    # The slot came back: the next read is pinned again (held after it ends).
    await _read(database, pinned)
    assert _checked_out(database) == 1
    await pinned.close()


async def test_a_connection_past_the_recycle_age_is_renewed(
    database: Database, checkouts: Checkouts
) -> None:
    pinned = PinnedConnections(database.engine, 1, 0.0)
    await _read(database, pinned)
    await _read(database, pinned)
    assert checkouts.count == 2  # the first went back to the pool, a second was taken
    assert _checked_out(database) == 1
    await pinned.close()


async def test_age_counts_from_when_the_pool_opened_the_connection(
    database: Database, checkouts: Checkouts
) -> None:
    """A connection that waited in the pool is not given a fresh recycle age by pinning."""
    async with database.engine.connect() as connection:
        await connection.exec_driver_sql("SELECT 1")
    await asyncio.sleep(0.5)  # the connection ages in the pool
    pinned = PinnedConnections(database.engine, 1, 0.4)
    await _read(database, pinned)  # pins the pool's connection, already 0.5 s old
    await _read(database, pinned)  # so this read renews it
    assert checkouts.count == 3
    await pinned.close()


async def test_a_small_pool_keeps_its_connections(settings: Settings) -> None:
    """Under four connections nothing is pinned, so sessions never wait on pinned ones."""
    small = settings.model_copy(update={"pg_pool_size": 1, "pg_max_overflow": 0})
    choice = choose_database(small)
    engine = create_engine(choice, small)
    if choice.is_sqlite:
        await engine.dispose()
        engine = create_sqlite_engine(
            choice.sqlite_path, busy_timeout_ms=1000, pool_size=1, pool_timeout=1
        )
    database = Database(engine, choice)
    try:
        assert database.pinned.size == 0
        await _read(database, database.pinned)
        await database.ping()  # the only connection is back in the pool
    finally:
        await database.dispose()


async def test_close_gives_every_connection_back(database: Database) -> None:
    pinned = PinnedConnections(database.engine, 2, None)
    async with holding(pinned):
        await _read(database, pinned)  # the second slot, idle after this
        assert _checked_out(database) == 2
        await pinned.close()
        assert _checked_out(database) == 1  # the idle one went back; the busy one is still out
    assert _checked_out(database) == 0  # and it went back when its read ended
    await _read(database, pinned)  # after close, reads still work, through the pool
    assert _checked_out(database) == 0


async def test_the_database_closes_its_pinned_connections(database: Database) -> None:
    await _read(database, database.pinned)
    assert _checked_out(database) == 1
    await database.pinned.close()
    assert _checked_out(database) == 0


def test_nothing_is_pinned_without_a_pool() -> None:
    """NullPool keeps no connection between uses, and neither may the pinned set."""
    engine = create_async_engine("sqlite+aiosqlite:///:memory:", poolclass=NullPool)
    assert PinnedConnections.for_engine(engine).size == 0


async def test_pinned_postgresql_connections_use_generic_plans_and_keep_them_to_themselves(
    database: Database,
) -> None:
    if database.choice.is_sqlite:
        pytest.skip("plan_cache_mode is PostgreSQL's")
    pinned = PinnedConnections(database.engine, 1, None)
    async with pinned.connection() as connection:
        driver = connection.driver_connection
        assert await driver.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    await pinned.close()
    # Every connection the pool can hand out now, the released one's place included.
    pool = database.engine.sync_engine.pool
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(pool.checkedin() + 1):  # type: ignore[attr-defined]
            session_connection = await stack.enter_async_context(database.engine.connect())
            mode = await session_connection.exec_driver_sql("SHOW plan_cache_mode")
            assert mode.scalar() == "auto"
