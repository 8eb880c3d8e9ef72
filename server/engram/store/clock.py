"""Time by the database's clock, for what several servers judge together: run leases.

Replicas' clocks drift apart; a lease one server writes and another judges
must be read on one clock, or a server whose clock runs ahead takes live runs
for dead.  PostgreSQL's clock is the one every replica shares.  SQLite serves
one machine, whose clock all its writers already share.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Interval, func, literal, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from engram.store.types import UtcDateTime, utc_now


def database_time(dialect: str, after: timedelta = timedelta(0)) -> ColumnElement[Any]:
    """The database's current time plus ``after``, as an expression to write or compare.

    On PostgreSQL, ``now()``: the time the transaction started.
    """
    if dialect == "postgresql":
        now: ColumnElement[Any] = func.now()
        if after:
            now = now + literal(after, Interval())
        return type_coerce(now, UtcDateTime())
    return literal(utc_now() + after, UtcDateTime())


async def clock_offset(session: AsyncSession) -> timedelta:
    """How far the database's clock is ahead of this process's (zero on SQLite).

    Measured against the middle of the round trip, so it is exact to within
    half of it: for values written in bulk, where an expression cannot go.
    """
    if session.get_bind().dialect.name != "postgresql":
        return timedelta(0)
    before = utc_now()
    database: datetime | None = await session.scalar(select(func.clock_timestamp()))
    after = utc_now()
    if database is None:  # pragma: no cover - clock_timestamp() is never NULL
        return timedelta(0)
    return database - (before + (after - before) / 2)
