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
from sqlalchemy.ext.asyncio import AsyncConnection

from engram.store.types import UtcDateTime, utc_now


def database_time(dialect: str, after: timedelta = timedelta(0)) -> ColumnElement[Any]:
    """The database's current time plus ``after``, as an expression to write or compare.

    On PostgreSQL, ``statement_timestamp()``: the time the statement began, so
    a statement that waited on a lock does not judge by when its transaction
    began.
    """
    if dialect == "postgresql":
        now: ColumnElement[Any] = func.statement_timestamp()
        if after:
            now = now + literal(after, Interval())
        return type_coerce(now, UtcDateTime())
    return literal(utc_now() + after, UtcDateTime())


# Round trips per measurement; the fastest one is kept (the least queueing in it).
CLOCK_SAMPLES = 3


async def clock_offset(connection: AsyncConnection) -> timedelta:
    """How far the database's clock is ahead of this process's (zero on SQLite).

    Each sample is one query timed alone, on a connection already checked
    out (a pool wait or a connect would skew it), against the middle of its
    round trip; the sample with the shortest round trip is exact to within
    half of it.  For values written in bulk, where an expression cannot go.
    """
    if connection.dialect.name != "postgresql":
        return timedelta(0)
    best: tuple[timedelta, timedelta] | None = None
    for _ in range(CLOCK_SAMPLES):
        before = utc_now()
        database: datetime = (await connection.execute(select(func.clock_timestamp()))).scalar_one()
        after = utc_now()
        round_trip = after - before
        if best is None or round_trip < best[0]:
            best = (round_trip, database - (before + round_trip / 2))
    assert best is not None
    return best[1]
