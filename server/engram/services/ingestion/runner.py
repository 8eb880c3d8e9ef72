"""The background ingestion of uploaded files: parse, chunk, embed, store.

Each file is ingested by an asyncio task that belongs to this runner (to the
server process), never to the RPC that uploaded it, so a client that
disconnects does not stop it.  What a file goes through:

1. **claim**: a conditional UPDATE takes a lease on the row (status
   ``parsing``); only one process ingests a file at a time, and a lease that
   expires (its process died) lets any process take the file over;
2. **parse** in a worker thread (never on the event loop), then **chunk**;
   the extracted text and the chunk count are stored (status ``embedding``);
3. **embed** a batch of chunks outside any transaction, then store the
   batch's passages and the new ``chunks_done`` in one short transaction;
4. **complete** (or **fail** with the parser's precise message): the
   uploaded bytes are dropped, the lease released.

A failure affects its file only.  Progress is announced in-process through
an :class:`asyncio.Event` per file (WatchFile wakes at once) and is in the
row, which watchers also poll, so a watcher served by another process sees
it too.

Crash and restart policy: files left unfinished are **re-ingested from the
start** (their partial passages are deleted first).  On start, and then
every ``sweep_interval``, the runner claims unfinished files whose lease is
missing or expired.  A file whose ingestion was interrupted
``MAX_ATTEMPTS`` times is marked failed rather than retried forever (a file
that crashes the server must not crash it on every start).  On shutdown,
running ingestions are cancelled and their leases released, so that the next
server resumes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from engram.adapters.embeddings.embedder import Vectors
from engram.adapters.embeddings.registry import EmbeddingRegistry
from engram.adapters.llm.errors import ProviderError
from engram.services.ingestion.chunker import Chunk, ChunkingOptions, chunk_text
from engram.services.ingestion.parsers import ParseError, parse
from engram.store.clock import database_time
from engram.store.database import Database
from engram.store.errors import ForeignKeyViolationError
from engram.store.models import FileContent, Passage, Source, SourceFile
from engram.store.models.sources import FileStatus
from engram.store.passage_search import VectorIndexes
from engram.store.types import utc_now

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
UNFINISHED = (FileStatus.QUEUED, FileStatus.PARSING, FileStatus.EMBEDDING)


@dataclass(frozen=True)
class IngestionOptions:
    chunking: ChunkingOptions = field(default_factory=ChunkingOptions)
    # Chunks embedded and stored together; one progress update per batch.
    batch_size: int = 64
    # Files ingested at once by this process (embedding is CPU-bound locally).
    concurrency: int = 2
    lease: timedelta = timedelta(seconds=60)
    sweep_interval: float = 30.0


class _FileGone(Exception):
    """The file was deleted (or taken over) while it was being ingested."""


class IngestionRunner:
    """Owns the ingestion tasks of one server process."""

    def __init__(
        self,
        database: Database,
        embeddings: EmbeddingRegistry,
        indexes: VectorIndexes,
        options: IngestionOptions | None = None,
    ) -> None:
        self.database = database
        self.embeddings = embeddings
        self.indexes = indexes
        self.options = options or IngestionOptions()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._signals: dict[str, asyncio.Event] = {}
        self._slots = asyncio.Semaphore(self.options.concurrency)
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Begin sweeping for unfinished files (now, then periodically)."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="ingestion-sweeper")

    async def close(self) -> None:
        """Cancel every running ingestion; each releases its file for the next server."""
        self._closed = True
        tasks = [task for task in (self._sweeper, *self._tasks.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold every ingestion slot of this process: new files wait, QUEUED, until exit.

        For maintenance windows and for tests that need to see a file before
        its ingestion starts.
        """
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(self.options.concurrency):
                await stack.enter_async_context(self._slots)
            yield

    def submit(self, file_id: str, organization_id: str) -> None:
        """Ingest ``file_id`` in the background (no-op when already running here)."""
        if self._closed or file_id in self._tasks:
            return
        task = asyncio.create_task(self._run(file_id, organization_id), name=f"ingest {file_id}")
        self._tasks[file_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(file_id, None))

    async def cancel(self, file_ids: Sequence[str]) -> None:
        """Stop the ingestions of ``file_ids`` running here (their files are being deleted)."""
        tasks = [self._tasks[file_id] for file_id in file_ids if file_id in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for file_id in file_ids:
            self.notify(file_id)

    # --- progress signals ------------------------------------------------------------

    def signal(self, file_id: str) -> asyncio.Event:
        """An event set at the file's next change; take it *before* reading the row."""
        event = self._signals.get(file_id)
        if event is None or event.is_set():
            event = self._signals[file_id] = asyncio.Event()
        return event

    def forget(self, file_id: str, event: asyncio.Event) -> None:
        """Drop ``event`` (taken for a file found finished), so finished files hold no entry."""
        if self._signals.get(file_id) is event:
            del self._signals[file_id]

    def notify(self, file_id: str) -> None:
        event = self._signals.pop(file_id, None)
        if event is not None:
            event.set()

    # --- the sweep -------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the sweep for unfinished files failed; trying again later")
            await asyncio.sleep(self.options.sweep_interval)

    async def sweep(self) -> int:
        """Submit every unfinished file whose lease is missing or expired; returns how many."""
        async with self.database.read(None, all_organizations=True) as session:
            rows = (
                await session.execute(
                    select(SourceFile.id, SourceFile.organization_id).where(
                        SourceFile.status.in_(UNFINISHED),
                        or_(
                            SourceFile.lease_expires_at.is_(None),
                            SourceFile.lease_expires_at < self._database_time(),
                        ),
                    )
                )
            ).all()
        for file_id, organization_id in rows:
            self.submit(file_id, organization_id)
        return len(rows)

    def _database_time(self, after: timedelta = timedelta(0)) -> ColumnElement[Any]:
        """Leases are written and judged on the database's clock (engram.store.clock)."""
        return database_time(self.database.engine.dialect.name, after)

    # --- one file --------------------------------------------------------------------

    async def _run(self, file_id: str, organization_id: str) -> None:
        async with self._slots:
            if not await self._claim(file_id, organization_id):
                return
            heartbeat = asyncio.create_task(self._renew_lease(file_id, organization_id))
            try:
                await self._ingest(file_id, organization_id)
            except _FileGone:
                pass
            except asyncio.CancelledError:
                await self._release(file_id, organization_id)
                raise
            except (ParseError, ProviderError) as error:
                await self._fail(file_id, organization_id, str(error))
            except Exception as error:
                logger.exception("ingestion of %s failed unexpectedly", file_id)
                await self._fail(
                    file_id,
                    organization_id,
                    f"the server failed while ingesting the file ({type(error).__name__}); "
                    "upload it again, and report it if it fails again",
                )
            finally:
                heartbeat.cancel()
                # The heartbeat may have ended on its own (the file was deleted).
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await heartbeat
                self.notify(file_id)

    async def _claim(self, file_id: str, organization_id: str) -> bool:
        """Take the file's lease; False when it is finished, gone, or held elsewhere."""
        now = utc_now()

        async def work(session: AsyncSession) -> str | None:
            claimed = await session.execute(
                update(SourceFile)
                .where(
                    SourceFile.id == file_id,
                    SourceFile.status.in_(UNFINISHED),
                    or_(
                        SourceFile.lease_expires_at.is_(None),
                        SourceFile.lease_expires_at < self._database_time(),
                    ),
                )
                .values(
                    status=FileStatus.PARSING,
                    lease_expires_at=self._database_time(self.options.lease),
                    attempts=SourceFile.attempts + 1,
                    updated_at=now,
                )
                .returning(SourceFile.attempts)
            )
            attempts = claimed.scalar_one_or_none()
            if attempts is None:
                return None
            return "retry" if attempts <= MAX_ATTEMPTS else "exhausted"

        outcome = await self.database.run_transaction(work, organization_id)
        if outcome == "exhausted":
            await self._fail(
                file_id,
                organization_id,
                f"the ingestion was interrupted {MAX_ATTEMPTS} times (server restarts or "
                "crashes); upload the file again",
            )
            return False
        self.notify(file_id)
        return outcome == "retry"

    async def _renew_lease(self, file_id: str, organization_id: str) -> None:
        interval = self.options.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            await self._update(
                file_id, organization_id, lease_expires_at=self._database_time(self.options.lease)
            )

    async def _update(self, file_id: str, organization_id: str, **values: object) -> None:
        """Change the file's row; _FileGone when it no longer exists."""

        async def work(session: AsyncSession) -> int:
            result = await session.execute(
                update(SourceFile)
                .where(SourceFile.id == file_id)
                .values(**values, updated_at=utc_now())
                .returning(SourceFile.id)
            )
            return len(result.all())

        if not await self.database.run_transaction(work, organization_id):
            raise _FileGone(file_id)

    async def _ingest(self, file_id: str, organization_id: str) -> None:
        async with self.database.read(organization_id) as session:
            row = (
                await session.execute(
                    select(SourceFile, Source.archive_id, Source.embedding, FileContent.data)
                    .join(Source, Source.id == SourceFile.source_id)
                    .outerjoin(FileContent, FileContent.file_id == SourceFile.id)
                    .where(SourceFile.id == file_id)
                )
            ).one_or_none()
        if row is None:
            raise _FileGone(file_id)
        file, archive_id, handle, data = row
        if data is None:
            raise ParseError("the uploaded content is missing; upload the file again")
        document = await asyncio.to_thread(parse, data, file.media_type)
        chunks = await asyncio.to_thread(chunk_text, document.text, self.options.chunking)
        embedder = self.embeddings.resolve(handle)

        async def start_embedding(session: AsyncSession) -> None:
            # A restarted ingestion starts over: drop what an earlier attempt stored.
            await session.execute(delete(Passage).where(Passage.file_id == file_id))

        await self.database.run_transaction(start_embedding, organization_id)
        await self._update(
            file_id,
            organization_id,
            status=FileStatus.EMBEDDING,
            text=document.text,
            page_count=document.page_count,
            chunks_total=len(chunks),
            chunks_done=0,
        )
        self.notify(file_id)
        size = self.options.batch_size
        for first in range(0, len(chunks), size):
            batch = chunks[first : first + size]
            vectors = await embedder.embed([chunk.text for chunk in batch])
            await self.indexes.ensure(int(vectors.shape[1]))
            await self._store(file_id, organization_id, archive_id, embedder.handle, batch, vectors)
            self.notify(file_id)
        await self._finish(file_id, organization_id, FileStatus.COMPLETED, "")

    async def _store(
        self,
        file_id: str,
        organization_id: str,
        archive_id: str,
        model: str,
        batch: Sequence[Chunk],
        vectors: Vectors,
    ) -> None:
        rows: list[list[float]] = vectors.tolist()

        async def work(session: AsyncSession) -> int:
            session.add_all(
                Passage(
                    archive_id=archive_id,
                    file_id=file_id,
                    text=chunk.text,
                    embedding=vector,
                    embedding_dim=len(vector),
                    embedding_model=model,
                    tags=[],
                    metadata_={"chunk": chunk.index, "start": chunk.start, "end": chunk.end},
                )
                for chunk, vector in zip(batch, rows, strict=True)
            )
            await session.flush()
            result = await session.execute(
                update(SourceFile)
                .where(SourceFile.id == file_id)
                .values(
                    chunks_done=batch[-1].index + 1,
                    lease_expires_at=self._database_time(self.options.lease),
                    updated_at=utc_now(),
                )
                .returning(SourceFile.id)
            )
            return len(result.all())

        try:
            stored = await self.database.run_transaction(work, organization_id)
        except ForeignKeyViolationError as error:
            raise _FileGone(file_id) from error
        if not stored:
            raise _FileGone(file_id)

    async def _finish(
        self, file_id: str, organization_id: str, status: FileStatus, error: str
    ) -> None:
        async def work(session: AsyncSession) -> None:
            if status is FileStatus.FAILED:
                await session.execute(delete(Passage).where(Passage.file_id == file_id))
            await session.execute(delete(FileContent).where(FileContent.file_id == file_id))
            now = utc_now()
            await session.execute(
                update(SourceFile)
                .where(SourceFile.id == file_id)
                .values(
                    status=status,
                    error=error,
                    lease_expires_at=None,
                    completed_at=now,
                    updated_at=now,
                )
            )

        await self.database.run_transaction(work, organization_id)
        self.notify(file_id)

    async def _fail(self, file_id: str, organization_id: str, error: str) -> None:
        logger.info("ingestion of %s failed: %s", file_id, error)
        await self._finish(file_id, organization_id, FileStatus.FAILED, error)

    async def _release(self, file_id: str, organization_id: str) -> None:
        """Give the file back (shutdown): the next sweep anywhere resumes it at once."""
        with contextlib.suppress(Exception):
            # A clean stop is not a failed attempt.
            await self._update(
                file_id,
                organization_id,
                status=FileStatus.QUEUED,
                lease_expires_at=None,
                attempts=SourceFile.attempts - 1,
            )
