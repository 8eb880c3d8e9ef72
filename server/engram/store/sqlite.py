"""The SQLite engine: WAL, foreign keys, a busy timeout and vector functions.

Python's standard ``sqlite3`` module is often built without extension
loading (the interpreter on our machines is), which rules out ``sqlite-vec``.
``pysqlite3`` ships its own, newer SQLite that can load extensions; we use it
when it is installed and fall back to the standard module otherwise, in which
case vector search is reported unavailable instead of failing obscurely.

Transactions are begun explicitly: ``BEGIN`` for reads and ``BEGIN IMMEDIATE``
for writes.  Taking the write lock up front is what prevents the classic
"database is locked" failure, where two deferred transactions both read and
then both try to upgrade to writing.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# Execution option that marks a connection as the one writer.
WRITE_OPTION = "engram_write"


def _pick_sqlite_module() -> types.ModuleType:
    try:
        return importlib.import_module("pysqlite3.dbapi2")
    except ImportError:
        return importlib.import_module("sqlite3")


sqlite_module = _pick_sqlite_module()


def vector_extension_available() -> bool:
    """Whether this SQLite can load the ``sqlite-vec`` extension."""
    try:
        import sqlite_vec  # noqa: F401
    except ImportError:
        return False
    return hasattr(sqlite_module.Connection, "enable_load_extension")


def _load_vector_extension(raw: Any) -> None:
    if not vector_extension_available():
        return
    import sqlite_vec

    raw.enable_load_extension(True)
    try:
        sqlite_vec.load(raw)
    finally:
        raw.enable_load_extension(False)


class _SqliteModuleAdapter(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite adapter, with its error classes taken from our module.

    The stock adapter takes them from ``aiosqlite``, which re-exports the
    standard ``sqlite3`` ones; with ``pysqlite3`` underneath, errors would
    then escape SQLAlchemy's wrapping and our error translation.
    """

    def _init_dbapi_attributes(self) -> None:
        super()._init_dbapi_attributes()
        for name in (
            "DatabaseError",
            "Error",
            "IntegrityError",
            "NotSupportedError",
            "OperationalError",
            "ProgrammingError",
            "sqlite_version",
            "sqlite_version_info",
        ):
            setattr(self, name, getattr(self.sqlite, name))


def _connector(path: Path, busy_timeout_ms: int) -> Callable[[], Any]:
    def connect() -> Any:
        raw = sqlite_module.connect(
            str(path),
            timeout=busy_timeout_ms / 1000,
            isolation_level=None,  # we issue BEGIN ourselves, see module docstring
            check_same_thread=False,
        )
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA foreign_keys=ON")
        raw.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        raw.execute("PRAGMA synchronous=NORMAL")
        _load_vector_extension(raw)
        return raw

    return connect


def create_sqlite_engine(
    path: Path,
    *,
    busy_timeout_ms: int,
    echo: bool = False,
    pool_size: int = 5,
    pool_timeout: float = 30.0,
    poolclass: type[Any] | None = None,
) -> AsyncEngine:
    """An async engine on the database file at ``path`` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connect = _connector(path, busy_timeout_ms)

    async def async_creator() -> aiosqlite.Connection:
        connection = aiosqlite.Connection(connect, iter_chunk_size=64)
        # A connection left open must not keep the interpreter from exiting.
        worker = getattr(connection, "_thread", None)
        if worker is not None:
            worker.daemon = True
        return await connection

    kwargs: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": 0,
        "pool_timeout": pool_timeout,
    }
    if poolclass is not None:
        kwargs["poolclass"] = poolclass
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{path}",
        module=_SqliteModuleAdapter(aiosqlite, sqlite_module),
        async_creator=async_creator,
        echo=echo,
        **kwargs,
    )
    _begin_explicitly(engine)
    return engine


def _begin_explicitly(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "begin")
    def begin(connection: Connection) -> None:
        if connection.get_execution_options().get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")
