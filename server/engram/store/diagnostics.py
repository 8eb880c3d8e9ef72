"""Startup checks whose failures a person can act on.

A raw driver traceback ("InvalidPasswordError", "Errno 111") tells an operator
little.  Each check here turns the failure into one sentence that says what
went wrong and which variable to change.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from engram.config.database_choice import DatabaseChoice

_URI_HINT = "(or the matching part of ENGRAM_PG_URI / LETTA_PG_URI)"


class StartupError(RuntimeError):
    """The server cannot start; the message says what to change."""


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def explain_connection_failure(error: BaseException, choice: DatabaseChoice) -> str:
    """One actionable sentence for a failure to connect to ``choice``."""
    where = choice.redacted_url
    if choice.is_sqlite:
        return (
            f"cannot open the SQLite database {choice.sqlite_path}: {error}. "
            "Check that its directory is writable, or set ENGRAM_SQLITE_PATH."
        )
    for cause in _causes(error):
        name = type(cause).__name__
        if name == "InvalidPasswordError":
            return (
                f"PostgreSQL at {where} rejected the password. "
                f"Check ENGRAM_PG_PASSWORD {_URI_HINT}."
            )
        if name == "InvalidAuthorizationSpecificationError":
            return (
                f"PostgreSQL at {where} does not accept this user: {cause}. "
                f"Check ENGRAM_PG_USER {_URI_HINT}."
            )
        if name == "InvalidCatalogNameError":
            return (
                f"the database named in {where} does not exist. Create it, or check "
                f"ENGRAM_PG_DB {_URI_HINT}."
            )
        if isinstance(cause, ConnectionRefusedError):
            return (
                f"nothing accepts connections at {where} (connection refused). Is PostgreSQL "
                f"running there? Check ENGRAM_PG_HOST and ENGRAM_PG_PORT {_URI_HINT}."
            )
        if isinstance(cause, socket.gaierror):
            return f"the host in {where} could not be resolved. Check ENGRAM_PG_HOST {_URI_HINT}."
        if isinstance(cause, TimeoutError):
            return (
                f"connecting to {where} timed out. Check ENGRAM_PG_HOST and ENGRAM_PG_PORT "
                f"{_URI_HINT}, and any firewall between here and the database."
            )
        if isinstance(cause, OSError) and cause.errno is not None:
            return (
                f"cannot reach PostgreSQL at {where}: {cause.strerror}. "
                f"Check ENGRAM_PG_HOST and ENGRAM_PG_PORT {_URI_HINT}."
            )
    return f"cannot connect to the database at {where}: {error}"


async def check_connection(engine: AsyncEngine, choice: DatabaseChoice) -> None:
    """Open one connection and run a trivial query, or raise :class:`StartupError`."""
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as error:
        raise StartupError(explain_connection_failure(error, choice)) from error


async def check_vector_support(engine: AsyncEngine, choice: DatabaseChoice) -> None:
    """Fail early, and clearly, when PostgreSQL lacks the pgvector extension."""
    if not choice.is_postgresql:
        return
    async with engine.connect() as connection:
        installed = await connection.scalar(
            text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        )
        if installed is not None:
            return
        available = await connection.scalar(
            text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        )
    if available is None:
        raise StartupError(
            f"the PostgreSQL server at {choice.redacted_url} does not have the pgvector "
            "extension, which Engram needs for embeddings. Install pgvector on that server "
            "(for example the postgresql-<version>-pgvector package, or the pgvector/pgvector "
            "image), or point ENGRAM_PG_URI at a server that has it."
        )
