"""Turning driver exceptions into :mod:`engram.store.errors`, the same on both engines.

PostgreSQL reports a SQLSTATE and the name of the violated constraint.
SQLite reports an English message such as ``UNIQUE constraint failed:
tools.organization_id, tools.name``; we map the columns back to the named
constraint in our metadata, so that callers see the same constraint name
whichever engine is underneath.  SQLite does not say which foreign key
failed; when the table has several we find the one whose parent row is
missing (see :func:`identify_sqlite_foreign_key`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ForeignKeyConstraint, MetaData, Table, UniqueConstraint, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm.exc import StaleDataError

from engram.store.errors import (
    ConcurrentUpdateError,
    ConstraintViolationError,
    DatabaseTimeoutError,
    DatabaseUnavailableError,
    DeadlockError,
    ForeignKeyViolationError,
    LockNotAvailableError,
    NotNullViolationError,
    StoreError,
    UniqueViolationError,
)

# PostgreSQL SQLSTATE codes we distinguish.
PG_UNIQUE_VIOLATION = "23505"
PG_FOREIGN_KEY_VIOLATION = "23503"
PG_NOT_NULL_VIOLATION = "23502"
PG_LOCK_NOT_AVAILABLE = "55P03"
PG_DEADLOCK_DETECTED = "40P01"
PG_SERIALIZATION_FAILURE = "40001"
PG_QUERY_CANCELED = "57014"
PG_CONNECTION_CLASS = "08"

_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (?P<cols>.+)")
_SQLITE_NOT_NULL = re.compile(r"NOT NULL constraint failed: (?P<col>\S+)")
_SQLITE_STATEMENT_TABLE = re.compile(
    r"^\s*(?:INSERT(?:\s+OR\s+\w+)?\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(?P<table>\w+)\"?",
    re.IGNORECASE,
)


def translate(error: BaseException, metadata: MetaData) -> StoreError | None:
    """The store error for ``error``, or None when it is not a database error we know."""
    if isinstance(error, StoreError):
        return error
    if isinstance(error, StaleDataError):
        return ConcurrentUpdateError(
            "the resource was changed by someone else since it was read; read it again and retry"
        )
    if isinstance(error, sa_exc.TimeoutError):
        return DatabaseTimeoutError(
            "no database connection became free in time; raise ENGRAM_PG_POOL_SIZE, "
            "ENGRAM_PG_MAX_OVERFLOW or ENGRAM_PG_POOL_TIMEOUT, or lower the load",
            kind="pool",
        )
    if not isinstance(error, sa_exc.DBAPIError):
        return None
    sqlstate = _pg_sqlstate(error)
    if sqlstate is not None:
        return _translate_postgres(error, sqlstate)
    return _translate_sqlite(error, metadata)


def _pg_cause(error: sa_exc.DBAPIError) -> BaseException | None:
    """The asyncpg exception behind SQLAlchemy's adapter exception, if any."""
    orig = error.orig
    cause = getattr(orig, "__cause__", None)
    return cause if cause is not None else orig


def _pg_sqlstate(error: sa_exc.DBAPIError) -> str | None:
    cause = _pg_cause(error)
    sqlstate = getattr(cause, "sqlstate", None) or getattr(error.orig, "sqlstate", None)
    return str(sqlstate) if sqlstate else None


def _translate_postgres(error: sa_exc.DBAPIError, sqlstate: str) -> StoreError | None:
    cause = _pg_cause(error)
    table = getattr(cause, "table_name", None)
    constraint = getattr(cause, "constraint_name", None)
    column = getattr(cause, "column_name", None)
    if sqlstate == PG_UNIQUE_VIOLATION:
        return UniqueViolationError(
            _unique_message(table, constraint),
            table=table,
            constraint=constraint,
            columns=_columns_from_detail(getattr(cause, "detail", None)),
        )
    if sqlstate == PG_FOREIGN_KEY_VIOLATION:
        return ForeignKeyViolationError(
            _foreign_key_message(table, constraint),
            table=table,
            constraint=constraint,
            columns=_columns_from_detail(getattr(cause, "detail", None)),
        )
    if sqlstate == PG_NOT_NULL_VIOLATION:
        return NotNullViolationError(
            f"{table}.{column} must not be empty",
            table=table,
            constraint=None,
            columns=(column,) if column else (),
        )
    if sqlstate == PG_LOCK_NOT_AVAILABLE:
        return LockNotAvailableError("a row or table needed by this change is locked; retry")
    if sqlstate in (PG_DEADLOCK_DETECTED, PG_SERIALIZATION_FAILURE):
        return DeadlockError("the transaction conflicted with another one and was rolled back")
    if sqlstate == PG_QUERY_CANCELED:
        return DatabaseTimeoutError(
            "a database statement ran past ENGRAM_PG_STATEMENT_TIMEOUT_MS", kind="statement"
        )
    if sqlstate.startswith(PG_CONNECTION_CLASS):
        return DatabaseUnavailableError(f"the database connection failed ({sqlstate})")
    if sqlstate.startswith("23"):
        return ConstraintViolationError(
            f"the change breaks the rule {constraint or sqlstate} on {table}",
            table=table,
            constraint=constraint,
        )
    return None


def _translate_sqlite(error: sa_exc.DBAPIError, metadata: MetaData) -> StoreError | None:
    orig = error.orig
    message = str(orig)
    if isinstance(error, sa_exc.IntegrityError):
        unique = _SQLITE_UNIQUE.search(message)
        if unique:
            table, columns = _split_qualified(unique.group("cols"))
            constraint = _unique_constraint_name(metadata, table, columns)
            return UniqueViolationError(
                _unique_message(table, constraint),
                table=table,
                constraint=constraint,
                columns=columns,
            )
        not_null = _SQLITE_NOT_NULL.search(message)
        if not_null:
            table, columns = _split_qualified(not_null.group("col"))
            return NotNullViolationError(
                f"{table}.{columns[0]} must not be empty",
                table=table,
                constraint=None,
                columns=columns,
            )
        if "FOREIGN KEY constraint failed" in message:
            table = statement_table(error.statement)
            constraint = _only_foreign_key(metadata, table)
            return ForeignKeyViolationError(
                _foreign_key_message(table, constraint),
                table=table,
                constraint=constraint,
            )
        return ConstraintViolationError(
            f"the change breaks a rule of the schema: {message}", table=None, constraint=None
        )
    errorname = getattr(orig, "sqlite_errorname", "")
    if errorname.startswith("SQLITE_BUSY") or "database is locked" in message:
        return LockNotAvailableError(
            "another process held the database's write lock longer than "
            "ENGRAM_SQLITE_BUSY_TIMEOUT_MS; retry"
        )
    if errorname.startswith("SQLITE_CANTOPEN"):
        return DatabaseUnavailableError(f"the SQLite database file could not be opened: {message}")
    return None


def _unique_message(table: str | None, constraint: str | None) -> str:
    return f"a {table or 'row'} with the same unique key already exists ({constraint})"


def _foreign_key_message(table: str | None, constraint: str | None) -> str:
    return f"a {table or 'row'} refers to a resource that does not exist ({constraint})"


def _columns_from_detail(detail: str | None) -> tuple[str, ...]:
    """Column names from PostgreSQL's ``Key (a, b)=(...)`` detail text."""
    if not detail:
        return ()
    match = re.search(r"Key \((?P<cols>[^)]*)\)=", detail)
    if not match:
        return ()
    return tuple(part.strip().strip('"') for part in match.group("cols").split(","))


def _split_qualified(text: str) -> tuple[str | None, tuple[str, ...]]:
    table: str | None = None
    columns: list[str] = []
    for part in text.split(","):
        name = part.strip()
        if "." in name:
            table, name = name.split(".", 1)
        columns.append(name)
    return table, tuple(columns)


_INSERT_COLUMNS = re.compile(r"\(\s*(?P<cols>[^)]*?)\s*\)\s*VALUES", re.IGNORECASE)
_UPDATE_ASSIGNMENTS = re.compile(r"\bSET\b(?P<body>.*?)(?:\bWHERE\b|$)", re.IGNORECASE | re.DOTALL)


def _named_parameters(
    statement: str, parameters: Mapping[str, Any] | Sequence[Any] | None
) -> dict[str, Any]:
    """Column -> value for a failed INSERT or UPDATE, whatever the parameter style."""
    if isinstance(parameters, Mapping):
        return dict(parameters)
    if not isinstance(parameters, Sequence) or isinstance(parameters, str):
        return {}
    if statement.lstrip().upper().startswith("INSERT"):
        match = _INSERT_COLUMNS.search(statement)
        if match is None:
            return {}
        columns = [c.strip().strip('"') for c in match.group("cols").split(",")]
        return dict(zip(columns, parameters, strict=False))
    match = _UPDATE_ASSIGNMENTS.search(statement)
    if match is None:
        return {}
    columns = [part.split("=")[0].strip().strip('"') for part in match.group("body").split(",")]
    return dict(zip(columns, parameters, strict=False))


def statement_table(statement: str | None) -> str | None:
    """The table an INSERT, UPDATE or DELETE statement writes to."""
    if not statement:
        return None
    match = _SQLITE_STATEMENT_TABLE.match(statement)
    return match.group("table") if match else None


def _unique_constraint_name(
    metadata: MetaData, table_name: str | None, columns: Sequence[str]
) -> str | None:
    table = metadata.tables.get(table_name or "")
    if table is None:
        return None
    wanted = set(columns)
    if {c.name for c in table.primary_key.columns} == wanted:
        return str(table.primary_key.name) if table.primary_key.name else None
    for constraint in table.constraints:
        if (
            isinstance(constraint, UniqueConstraint)
            and {c.name for c in constraint.columns} == wanted
        ):
            return str(constraint.name)
    for index in table.indexes:
        if index.unique and {c.name for c in index.columns} == wanted:
            return str(index.name)
    for column in table.columns:
        if column.unique and {column.name} == wanted:
            # Column-level unique=True becomes a named unique constraint via the convention.
            return f"uq_{table.name}_{column.name}"
    return None


def _foreign_keys(metadata: MetaData, table_name: str | None) -> list[ForeignKeyConstraint]:
    table = metadata.tables.get(table_name or "")
    if table is None:
        return []
    return [c for c in table.constraints if isinstance(c, ForeignKeyConstraint)]


def _only_foreign_key(metadata: MetaData, table_name: str | None) -> str | None:
    keys = _foreign_keys(metadata, table_name)
    return str(keys[0].name) if len(keys) == 1 else None


async def identify_sqlite_foreign_key(
    engine: AsyncEngine,
    metadata: MetaData,
    error: ForeignKeyViolationError,
    parameters: Mapping[str, Any] | Sequence[Any] | None,
    statement: str | None,
) -> ForeignKeyViolationError:
    """Name the foreign key whose parent row is missing, for an SQLite violation.

    The failed INSERT or UPDATE's parameters tell us each referenced id; the
    first one whose parent row does not exist is the culprit.  Looks only at
    committed data through a separate connection, which is enough: a parent
    written earlier in the same transaction would not have failed the check.
    """
    if error.constraint is not None or statement is None:
        return error
    table: Table | None = metadata.tables.get(error.table or "")
    if table is None:
        return error
    values = _named_parameters(statement, parameters)
    async with engine.connect() as connection:
        for foreign_key in _foreign_keys(metadata, table.name):
            local = foreign_key.columns[0].name
            value = values.get(local)
            if value is None:
                continue
            parent_column = foreign_key.elements[0].column
            found = await connection.scalar(
                select(parent_column).where(parent_column == value).limit(1)
            )
            if found is None:
                return ForeignKeyViolationError(
                    _foreign_key_message(table.name, str(foreign_key.name)),
                    table=table.name,
                    constraint=str(foreign_key.name),
                    columns=(local,),
                )
    return error
