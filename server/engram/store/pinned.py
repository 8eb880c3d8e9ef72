"""A few pool connections kept checked out for the hottest one-statement reads.

Checking a connection out of SQLAlchemy's pool and back in costs about as much
CPU as the statement's own round trip (two greenlet switches, the pool's
bookkeeping and its events: ~90 us per call measured on a 2-core machine
against ~75 us for a ``SELECT 1`` on asyncpg).  For a read that is one
statement in autocommit (GetAgent, the agent read at the start of a turn) that
doubles the database's share of the call, so such reads borrow one of a small
set of connections that stay checked out instead: taking and giving one back
is a queue operation.

The set is a fast path, never a bottleneck: when every pinned connection is
busy the read checks one out of the pool as before, so a slow or remote
database cannot cap throughput at the size of the set.  What the pool would
do for a connection it hands out is kept:

* **Recycling**: a pinned connection older than the pool's ``recycle`` age
  (counted from when it was opened) is given back (the pool then renews it on
  its next checkout) and a fresh one taken in its place.
* **Dead connections**: a pinned connection is not pinged before each use.  A
  read that fails on one discards it (closed, never reused); the caller then
  retries through a session, whose checkout does ping and reconnect.
* **Shutdown**: :meth:`PinnedConnections.close` gives every idle connection
  back before the engine is disposed; one in use is closed when its read ends.

On PostgreSQL a pinned connection always uses generic plans
(:data:`GENERIC_PLANS`); that session setting never reaches the pool's other
users, since a pinned connection given back is closed, not reused.

At most a quarter of the pool is pinned (four of PostgreSQL's default 25, two
of SQLite's eight, none of a pool under four), and pinned connections count as
checked out in the pool metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.util.concurrency import greenlet_spawn

# Set on every pinned PostgreSQL connection.  Their statements look rows up
# by key (``id = ANY($2)``), for which the generic plan is right for any
# argument; left to choose, PostgreSQL keeps planning such a statement anew on
# every execution once its tables have statistics, because it cannot cost the
# array of a generic plan (measured on the agent read: 315 us of the backend's
# CPU per statement, 135 us with the generic plan).
GENERIC_PLANS = "SET plan_cache_mode = force_generic_plan"

# Pinned connections per engine: enough for a saturated process's reads in
# flight at once (measured: 2 and 4 gave the same GetAgent throughput at 64
# calls in flight), few enough to leave the pool its room.
MOST_PINNED = 4


@dataclass(slots=True)
class _Slot:
    """One place in the set: a pinned connection and when it was opened, or none yet."""

    connection: PoolProxiedConnection | None = None
    opened_at: float = 0.0  # wall-clock seconds, as the pool records it


class PinnedConnections:
    """Connections held out of ``engine``'s pool for one-statement reads.

    Use :meth:`connection` around exactly one statement run on the driver
    connection outside any transaction.
    """

    def __init__(self, engine: AsyncEngine, size: int, recycle_seconds: float | None) -> None:
        self._engine = engine
        self.dialect = engine.dialect  # what statements run on these connections compile for
        self._recycle_seconds = recycle_seconds
        # The free slots; a slot out of the queue is in use.  LIFO, so that a
        # lightly loaded process keeps reusing its warmest connection.
        self._free: asyncio.LifoQueue[_Slot] = asyncio.LifoQueue()
        for _ in range(size):
            self._free.put_nowait(_Slot())
        self.size = size
        self._closed = False

    @classmethod
    def for_engine(cls, engine: AsyncEngine) -> PinnedConnections:
        """As many as the pool can spare (none under NullPool, which keeps no connection)."""
        pool = engine.pool
        if not isinstance(pool, QueuePool):
            return cls(engine, 0, None)
        recycle = pool._recycle  # the pool's own setting; negative means never
        # A quarter of the pool at most, so a small pool keeps its
        # connections for sessions (none pinned below four).
        return cls(engine, min(MOST_PINNED, pool.size() // 4), recycle if recycle >= 0 else None)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[PoolProxiedConnection]:
        """A connection for one statement: pinned when one is free, else from the pool.

        An exception (cancellation included) inside the block discards the
        connection, whose state is then unknown, and is raised again.
        """
        slot = None if self._closed else _take(self._free)
        if slot is None:
            async with _checked_out(self._engine) as connection:
                yield connection
            return
        try:
            connection = await self._ready(slot)
            try:
                yield connection
            except BaseException:
                slot.connection = None
                await discard(connection)
                raise
        finally:
            await self._give_back(slot)

    async def close(self) -> None:
        """Give every idle pinned connection back to the pool; later reads use the pool.

        One in use goes back when its statement ends.
        """
        self._closed = True
        while (slot := _take(self._free)) is not None:
            await self._release(slot)

    async def _ready(self, slot: _Slot) -> PoolProxiedConnection:
        """``slot``'s connection, renewed when it has none or is due for recycling."""
        if slot.connection is not None:
            age = time.time() - slot.opened_at
            if self._recycle_seconds is None or age < self._recycle_seconds:
                return slot.connection
            await self._release(slot)
        connection = await self._engine.raw_connection()
        if self.dialect.name == "postgresql":
            try:
                driver: Any = connection.driver_connection  # asyncpg.Connection
                await driver.execute(GENERIC_PLANS)
            except BaseException:
                await discard(connection)
                raise
        slot.connection, slot.opened_at = connection, _opened_at(connection)
        return connection

    async def _give_back(self, slot: _Slot) -> None:
        if self._closed and slot.connection is not None:
            # Shut down while this statement ran: the engine is being
            # disposed, so the connection is closed rather than handed to a
            # pool nobody will empty again.
            connection, slot.connection = slot.connection, None
            await discard(connection)
        self._free.put_nowait(slot)

    async def _release(self, slot: _Slot) -> None:
        connection, slot.connection = slot.connection, None
        if connection is None:
            return
        if self.dialect.name == "postgresql":
            # It carries GENERIC_PLANS: the pool gets its place back, and
            # opens a new connection for it rather than handing this one on.
            await discard(connection)
            return
        await greenlet_spawn(connection.close)


def _opened_at(connection: PoolProxiedConnection) -> float:
    """When the pool opened ``connection``'s database connection (now, if it does not say).

    A connection may have waited in the pool for most of its recycle age
    before it was pinned: its age counts from its opening, as the pool's does.
    """
    record = getattr(connection, "_connection_record", None)
    started = getattr(record, "starttime", None)
    return float(started) if isinstance(started, int | float) else time.time()


def _take(free: asyncio.LifoQueue[_Slot]) -> _Slot | None:
    try:
        return free.get_nowait()
    except asyncio.QueueEmpty:
        return None


@contextlib.asynccontextmanager
async def _checked_out(engine: AsyncEngine) -> AsyncIterator[PoolProxiedConnection]:
    connection: PoolProxiedConnection = await engine.raw_connection()
    try:
        yield connection
    except BaseException:
        await discard(connection)
        raise
    await greenlet_spawn(connection.close)


async def discard(connection: PoolProxiedConnection) -> None:
    """Close ``connection`` for good (its state is unknown), whatever else fails.

    An asyncpg connection is terminated first: invalidating it alone tries a
    polite close that waits up to two seconds on a peer that may be gone
    (a read given up as stuck would keep its callers waiting that long).
    """
    terminate = getattr(connection.driver_connection, "terminate", None)
    if callable(terminate) and not inspect.iscoroutinefunction(terminate):
        with contextlib.suppress(Exception):
            terminate()
    with contextlib.suppress(Exception):
        await greenlet_spawn(connection.invalidate)
    with contextlib.suppress(Exception):
        await greenlet_spawn(connection.close)
