"""Building the async engine the settings call for."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from engram.config.database_choice import DatabaseChoice
from engram.config.database_url import to_asyncpg
from engram.config.settings import Settings
from engram.store.pool import ObservedQueuePool
from engram.store.sqlite import create_sqlite_engine

# SQLite serialises writers anyway; a handful of readers is plenty.
SQLITE_POOL_SIZE = 8

# pgvector's HNSW scans, set per connection (reads run in autocommit, so a
# SET LOCAL would not last): iterative scans keep filtered searches (one
# archive among many, tags, time ranges) returning k rows, in nearly exact
# order; a wider candidate list than the default 40 keeps recall@10 >= 0.95.
# Only passage searches use HNSW, so nothing else is affected.
VECTOR_SEARCH_SETTINGS = {"hnsw.iterative_scan": "relaxed_order", "hnsw.ef_search": "100"}


def create_engine(choice: DatabaseChoice, settings: Settings) -> AsyncEngine:
    """The engine for ``choice``, with the pool and timeouts from ``settings``."""
    if choice.is_sqlite:
        assert choice.sqlite_path is not None
        return create_sqlite_engine(
            choice.sqlite_path,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            echo=settings.pg_echo,
            pool_size=SQLITE_POOL_SIZE,
            pool_timeout=settings.pg_pool_timeout,
            poolclass=ObservedQueuePool,
        )
    return create_postgres_engine(choice.url, settings)


def create_postgres_engine(url: str, settings: Settings) -> AsyncEngine:
    target = to_asyncpg(url)
    connect_args: dict[str, Any] = dict(target.connect_args)
    server_settings = dict(connect_args.get("server_settings", {}))
    if settings.pg_statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.pg_statement_timeout_ms)
    server_settings.update(VECTOR_SEARCH_SETTINGS)
    connect_args["server_settings"] = server_settings
    kwargs: dict[str, Any] = {
        "echo": settings.pg_echo,
        "pool_pre_ping": settings.pool_pre_ping,
        "connect_args": connect_args,
    }
    if settings.disable_sqlalchemy_pooling:
        kwargs["poolclass"] = NullPool
    else:
        kwargs.update(
            poolclass=ObservedQueuePool,
            pool_size=settings.pg_pool_size,
            max_overflow=settings.pg_max_overflow,
            pool_timeout=settings.pg_pool_timeout,
            pool_recycle=settings.pg_pool_recycle,
            pool_use_lifo=settings.pool_use_lifo,
        )
    return create_async_engine(target.url, **kwargs)
