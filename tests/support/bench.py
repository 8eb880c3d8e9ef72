"""Databases for the benchmark scripts (`scripts/bench-*`), as environment variables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.postgres import start_embedded_postgres


@contextmanager
def postgres_env(uri: str | None, database: str) -> Iterator[dict[str, str]]:
    """``ENGRAM_PG_URI`` for ``uri``, or for a new database on an embedded PostgreSQL."""
    if uri:
        yield {"ENGRAM_PG_URI": uri}
        return
    server = start_embedded_postgres()
    try:
        server.psql(f"CREATE DATABASE {database}")
        yield {"ENGRAM_PG_URI": server.url(database)}
    finally:
        server.stop()


@contextmanager
def sqlite_env(home: Path) -> Iterator[dict[str, str]]:
    """``ENGRAM_SQLITE_PATH`` for a database file in ``home``."""
    yield {"ENGRAM_SQLITE_PATH": str(home / "engram.db")}
