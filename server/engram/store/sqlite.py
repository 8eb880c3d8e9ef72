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

import collections
import importlib
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from threading import Thread
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

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


_Outcome = tuple[Any, list[Any], int, int | None]


def _run_statement(raw: Any, operation: str, parameters: Any, many: bool) -> _Outcome:
    """Execute one statement to completion on the connection's own thread."""
    cursor = raw.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class _OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor that runs a whole statement in one trip to aiosqlite's thread.

    The stock adapter makes four trips per statement (open a cursor, execute,
    fetch, close), each a hand-off to the connection's thread and back
    through the event loop; that hand-off, not SQLite, was most of the cost of
    a small read.  Here one function does all four on the thread, and the
    rows, description, row count and last row id come back together.
    Results are buffered either way (the stock cursor fetches all rows too);
    server-side cursors keep the stock implementation.
    """

    __slots__ = ("_description", "_lastrowid", "_rowcount")
    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: Any) -> None:  # no trip to open a cursor
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    def close(self) -> None:
        self._rows.clear()

    async def _run(self, operation: Any, parameters: Any, many: bool) -> None:
        connection = self._connection  # aiosqlite.Connection (private API, pinned range)
        async with self._adapt_connection._execute_mutex:
            outcome: _Outcome = await connection._execute(
                _run_statement, connection._conn, operation, parameters, many
            )
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows)

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._run(operation, parameters, False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Sequence[Any]) -> Any:
        await self._run(operation, seq_of_parameters, True)


class _OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = _OneTripCursor

    def rollback(self) -> None:
        # The pool rolls back every connection it takes back.  Outside a
        # transaction (a statement run in autocommit, see run_each_on_thread) that
        # is a no-op which would still cost a trip to the thread; the flag is
        # safe to read here because nothing else uses a connection being
        # returned.
        raw = self._connection._connection
        if raw is not None and not raw.in_transaction:
            return
        super().rollback()


def _run_each(raw: Any, operation: str, parameter_lists: Sequence[Sequence[Any]]) -> list[Any]:
    cursor = raw.cursor()
    try:
        return [cursor.execute(operation, parameters).fetchall() for parameters in parameter_lists]
    finally:
        cursor.close()


async def run_each_on_thread(
    connection: Any, operation: str, parameter_lists: Sequence[Sequence[Any]]
) -> list[list[Any]]:
    """The rows of one read statement run once per parameter list, in autocommit, in one trip.

    ``connection`` is a pooled DBAPI connection of :func:`create_sqlite_engine`.
    Each statement outside ``BEGIN`` is its own read transaction, so each
    sees one consistent snapshot like any read; the trip to the connection's
    thread, not SQLite, is most of a small read's cost, and is paid once.
    """
    adapted: _OneTripConnection = connection
    driver = adapted._connection  # aiosqlite.Connection (private API, pinned range)
    async with adapted._execute_mutex:
        results: list[list[Any]] = await driver._execute(
            _run_each, driver._conn, operation, parameter_lists
        )
    return results


class _SqliteModuleAdapter(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite adapter, with our error classes and one-trip cursors.

    The stock adapter takes its error classes from ``aiosqlite``, which
    re-exports the standard ``sqlite3`` ones; with ``pysqlite3`` underneath,
    errors would then escape SQLAlchemy's wrapping and our error translation.
    """

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        creator_fn = kw.pop("async_creator_fn", None)
        connection = creator_fn(*arg, **kw) if creator_fn else self.aiosqlite.connect(*arg, **kw)
        if isinstance(connection, Thread):  # aiosqlite before 0.22
            connection.daemon = True
        return _OneTripConnection(self, await_(connection))

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
