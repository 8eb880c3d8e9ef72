"""Pool settings reach the PostgreSQL engine; ids have the documented shape."""

from __future__ import annotations

import re

from sqlalchemy.pool import NullPool

from engram.config.settings import Settings
from engram.store.engine import create_postgres_engine
from engram.store.ids import IdPrefix, is_valid_id, new_id
from engram.store.pool import ObservedQueuePool

URL = "postgresql://u:p@db.example:5432/engram?application_name=engram-test"


async def test_pool_settings_are_applied() -> None:
    settings = Settings(
        pg_pool_size=7,
        pg_max_overflow=3,
        pg_pool_timeout=4.5,
        pg_pool_recycle=99,
        pool_use_lifo=False,
        pool_pre_ping=False,
        pg_echo=True,
    )
    engine = create_postgres_engine(URL, settings)
    pool = engine.pool
    assert isinstance(pool, ObservedQueuePool)
    assert pool.size() == 7
    assert pool._max_overflow == 3
    assert pool._timeout == 4.5
    assert pool._recycle == 99
    assert pool._pre_ping is False
    assert pool._pool.use_lifo is False
    assert engine.echo is True
    await engine.dispose()


async def test_defaults_pool_with_lifo_and_pre_ping() -> None:
    engine = create_postgres_engine(URL, Settings())
    pool = engine.pool
    assert isinstance(pool, ObservedQueuePool)
    assert (pool.size(), pool._max_overflow, pool._timeout, pool._recycle) == (25, 10, 30.0, 1800)
    assert pool._pre_ping is True
    assert pool._pool.use_lifo is True
    await engine.dispose()


async def test_disabling_pooling_selects_null_pool() -> None:
    engine = create_postgres_engine(URL, Settings(disable_sqlalchemy_pooling=True))
    assert isinstance(engine.pool, NullPool)
    await engine.dispose()


def test_ids_are_prefixed_uuid4() -> None:
    value = new_id(IdPrefix.AGENT)
    assert re.fullmatch(r"agent-[0-9a-f-]{36}", value)
    assert is_valid_id(value, IdPrefix.AGENT)
    assert not is_valid_id(value, IdPrefix.BLOCK)
    assert not is_valid_id("agent-not-a-uuid", IdPrefix.AGENT)
    assert new_id(IdPrefix.AGENT) != value
