"""Alembic environment: the same settings and engine selection as the server.

Run either through ``alembic`` (the database comes from ENGRAM_* / LETTA_*
variables) or through :mod:`engram.store.migrations`, which hands over an
open connection in ``config.attributes["connection"]``.  SQLite runs in batch
mode, since it cannot alter most constraints in place.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from engram.store.migrations import configure_context, open_configured_engine

config = context.config


def run_with(connection: Connection) -> None:
    configure_context(context, connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_on_configured_database() -> None:
    async with open_configured_engine() as engine, engine.connect() as connection:
        await connection.run_sync(run_with)
        await connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")

provided = config.attributes.get("connection")
if provided is not None:
    run_with(provided)
else:
    asyncio.run(run_on_configured_database())
