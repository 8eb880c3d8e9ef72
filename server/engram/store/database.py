"""The store's entry point: sessions and transactions on one engine.

Reads and writes are opened differently on purpose.  :meth:`Database.read`
gives a session that may not write.  :meth:`Database.transaction` gives the
one unit of work of a request: it commits when the block ends and rolls back
on any error or cancellation, so a request never leaves a half-written change.
On SQLite the writers also queue on an in-process lock and take the database
write lock at ``BEGIN``, so concurrent writers wait their turn instead of
failing with "database is locked".

Errors leave as :mod:`engram.store.errors`.  :meth:`Database.run_transaction`
also retries a unit of work that lost a deadlock, with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from engram.config.database_choice import DatabaseChoice
from engram.store.error_translation import identify_sqlite_foreign_key, translate
from engram.store.errors import DeadlockError, ForeignKeyViolationError
from engram.store.models import Base
from engram.store.pinned import PinnedConnections
from engram.store.scoping import (
    ALL_ORGANIZATIONS_KEY,
    ORGANIZATION_KEY,
    READ_ONLY_KEY,
    ScopedSession,
)
from engram.store.sqlite import WRITE_OPTION

T = TypeVar("T")

DEADLOCK_ATTEMPTS = 4
DEADLOCK_BASE_DELAY_SECONDS = 0.05


class Database:
    """Sessions and transactions on one engine, scoped to an organization."""

    def __init__(self, engine: AsyncEngine, choice: DatabaseChoice) -> None:
        self.engine = engine
        self.choice = choice
        self.metadata = Base.metadata
        # For one-statement reads below the ORM (see engram.store.agent_reads).
        self.pinned = PinnedConnections.for_engine(engine)
        writer_engine = engine
        self._writer_lock: asyncio.Lock | None = None
        if choice.is_sqlite:
            writer_engine = engine.execution_options(**{WRITE_OPTION: True})
            self._writer_lock = asyncio.Lock()
        options: dict[str, Any] = {"expire_on_commit": False, "sync_session_class": ScopedSession}
        reader_engine = engine
        if not choice.is_sqlite:
            # At PostgreSQL's READ COMMITTED every statement takes its own
            # snapshot, so a read-only BEGIN ... ROLLBACK buys no consistency
            # and costs two round trips per request.  SQLite keeps its read
            # transaction: there it does give a multi-statement snapshot.
            reader_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._readers = async_sessionmaker(reader_engine, **options)
        self._writers = async_sessionmaker(writer_engine, **options)

    async def dispose(self) -> None:
        await self.pinned.close()
        await self.engine.dispose()

    async def ping(self) -> None:
        """Run a trivial statement; raises when the database cannot be reached.

        When callers are already queueing for a connection the pool is busy,
        not the database down (a dead database fails connections instead of
        holding them), so the probe does not join the queue and reports success.
        """
        if getattr(self.engine.pool, "waiting", 0) > 0:
            return
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    @contextlib.asynccontextmanager
    async def read(
        self, organization_id: str | None, *, all_organizations: bool = False
    ) -> AsyncIterator[AsyncSession]:
        """A session that reads within ``organization_id`` and may not write."""
        session = self._readers(info=_scope(organization_id, all_organizations, read_only=True))
        try:
            yield session
        except BaseException as error:
            await _close_quietly(session)
            await self._reraise(error)
        else:
            await session.close()

    @contextlib.asynccontextmanager
    async def transaction(
        self, organization_id: str | None, *, all_organizations: bool = False
    ) -> AsyncIterator[AsyncSession]:
        """One unit of work: committed at the end of the block, rolled back on any error."""
        async with self._write_turn():
            session = self._writers(info=_scope(organization_id, all_organizations))
            try:
                yield session
                await session.commit()
            except BaseException as error:
                await _close_quietly(session)
                await self._reraise(error)
            else:
                await session.close()

    async def run_transaction(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        organization_id: str | None,
        *,
        all_organizations: bool = False,
        attempts: int = DEADLOCK_ATTEMPTS,
    ) -> T:
        """Run ``work`` in a transaction, retrying it from the start after a deadlock."""
        for attempt in range(1, attempts + 1):
            try:
                async with self.transaction(
                    organization_id, all_organizations=all_organizations
                ) as session:
                    return await work(session)
            except DeadlockError:
                if attempt == attempts:
                    raise
                delay = DEADLOCK_BASE_DELAY_SECONDS * 2 ** (attempt - 1)
                await asyncio.sleep(delay * (0.5 + random.random()))
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def _write_turn(self) -> AsyncIterator[None]:
        if self._writer_lock is None:
            yield
            return
        async with self._writer_lock:
            yield

    async def _reraise(self, error: BaseException) -> None:
        """Raise ``error`` again, as a store error when it is one we recognise."""
        store_error = translate(error, self.metadata)
        if store_error is None or store_error is error:
            raise error
        if (
            isinstance(store_error, ForeignKeyViolationError)
            and self.choice.is_sqlite
            and isinstance(error, sa_exc.DBAPIError)
        ):
            store_error = await identify_sqlite_foreign_key(
                self.engine, self.metadata, store_error, error.params, error.statement
            )
        raise store_error from error


def _scope(
    organization_id: str | None, all_organizations: bool, read_only: bool = False
) -> dict[str, Any]:
    return {
        ORGANIZATION_KEY: organization_id,
        ALL_ORGANIZATIONS_KEY: all_organizations,
        READ_ONLY_KEY: read_only,
    }


async def _close_quietly(session: AsyncSession) -> None:
    """Roll back and release the connection even while the task is being cancelled."""
    with contextlib.suppress(Exception):
        await asyncio.shield(session.close())
