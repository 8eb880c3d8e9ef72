"""Data sources: folders of files that become searchable passages.

Each source owns an archive (``kind = "source"``) holding its passages, so
vector search over a source is vector search over an archive.  Uploads are
stored whole (the bytes until ingestion ends, in ``file_contents``) in one
transaction, then handed to the :class:`IngestionRunner`, which belongs to
the server rather than to the upload call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from engram.adapters.embeddings.registry import EmbeddingRegistry
from engram.services.caller import Caller
from engram.services.common import check_etag, clean_description, clean_display_name, load
from engram.services.errors import FieldViolation, InvalidArgumentError
from engram.services.file_tools import forget_source_files, give_file_tools
from engram.services.idempotency import check_request_id, create_once
from engram.services.ingestion import media_types
from engram.services.ingestion.runner import IngestionOptions, IngestionRunner
from engram.services.pagination import created_key, cut_page, oldest_first, page_request
from engram.store.database import Database
from engram.store.errors import NotFoundError
from engram.store.models import (
    Agent,
    Archive,
    FileContent,
    Source,
    SourceAgent,
    SourceFile,
)
from engram.store.models.sources import SOURCE_ARCHIVE_KIND, FileStatus
from engram.store.passage_search import VectorIndexes
from engram.store.types import utc_now

MAX_NAME_LENGTH = 200
MAX_FILE_NAME_LENGTH = 500
UPDATABLE_FIELDS = frozenset({"display_name", "description"})
# How often a watcher re-reads the file's row when no in-process signal came
# (the ingestion may run in another server process).
WATCH_POLL_SECONDS = 1.0


class UploadTooLargeError(InvalidArgumentError):
    reason = "UPLOAD_TOO_LARGE"


class UnsupportedMediaTypeError(InvalidArgumentError):
    reason = "UNSUPPORTED_MEDIA_TYPE"


@dataclass
class SourceView:
    """A source, the agents it is attached to, and how many files it holds."""

    source: Source
    agent_ids: list[str]
    file_count: int


@dataclass(frozen=True)
class UploadHeader:
    """The first message of an upload, in domain terms."""

    source_id: str
    file_name: str
    media_type: str
    request_id: str


def validate_source_fields(values: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    violations: list[FieldViolation] = []
    clean = dict(values)
    clean_display_name(clean, "source.display_name", MAX_NAME_LENGTH, violations, creating=creating)
    clean_description(clean)
    if violations:
        raise InvalidArgumentError(violations)
    return clean


def resolve_media_type(header: UploadHeader) -> str:
    """The type to read the upload as: the one given, else the extension's."""
    if header.media_type:
        media_type = media_types.normalise(header.media_type)
        if not media_types.is_supported(media_type):
            raise UnsupportedMediaTypeError.field(
                "header.media_type",
                f"{header.media_type!r} cannot be ingested; supported: "
                f"{', '.join(media_types.SUPPORTED)}",
            )
        return media_type
    guessed = media_types.from_file_name(header.file_name)
    if guessed is None:
        raise UnsupportedMediaTypeError.field(
            "header.file_name",
            f"the type of {header.file_name!r} cannot be told from its extension; name a "
            f"header.media_type (supported: {', '.join(media_types.SUPPORTED)})",
        )
    return guessed


def validate_file_name(file_name: str) -> str:
    name = file_name.strip()
    if not name:
        raise InvalidArgumentError.field("header.file_name", "is required")
    if len(name) > MAX_FILE_NAME_LENGTH or "/" in name or "\x00" in name:
        raise InvalidArgumentError.field(
            "header.file_name",
            f"must be at most {MAX_FILE_NAME_LENGTH} characters, without '/' or NUL",
        )
    return name


async def read_upload(chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """The whole upload; refused the moment it goes over ``max_bytes``."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer.extend(chunk)
        if len(buffer) > max_bytes:
            raise UploadTooLargeError.field(
                "data", f"the upload is larger than the server's limit of {max_bytes} bytes"
            )
    return bytes(buffer)


class SourceService:
    """Sources, their files, and attachments to agents."""

    def __init__(
        self,
        database: Database,
        embeddings: EmbeddingRegistry,
        indexes: VectorIndexes,
        options: IngestionOptions | None = None,
    ) -> None:
        self.database = database
        self.embeddings = embeddings
        self.runner = IngestionRunner(database, embeddings, indexes, options)

    def start(self) -> None:
        """Resume files a previous server left unfinished, and keep checking."""
        self.runner.start()

    async def close(self) -> None:
        await self.runner.close()

    # --- sources ---------------------------------------------------------------------

    async def create(
        self, caller: Caller, values: Mapping[str, Any], request_id: str
    ) -> SourceView:
        clean = validate_source_fields(values, creating=True)
        handle = str(clean.get("embedding") or self.embeddings.default_handle)
        if "/" not in handle.strip("/"):
            raise InvalidArgumentError.field(
                "source.embedding", "must be an embedding handle of the form provider/model"
            )
        # Refuses an unknown model or an unconfigured provider now, not at the first file.
        self.embeddings.resolve(handle)

        async def create(session: AsyncSession) -> str:
            archive = Archive(
                name=f"source: {clean['display_name']}",
                description="",
                embedding=handle,
                kind=SOURCE_ARCHIVE_KIND,
            )
            session.add(archive)
            await session.flush()
            source = Source(
                name=clean["display_name"],
                description=clean.get("description", ""),
                embedding=handle,
                archive_id=archive.id,
            )
            session.add(source)
            await session.flush()
            return source.id

        source_id = await create_once(
            self.database, caller.organization_id, "CreateSource", request_id, create
        )
        return await self.get(caller, source_id)

    async def get(self, caller: Caller, source_id: str) -> SourceView:
        async with self.database.read(caller.organization_id) as session:
            source = await load(session, Source, source_id, "source")
            return (await self._views(session, [source]))[0]

    async def list_page(
        self, caller: Caller, *, page_size: int, page_token: str
    ) -> tuple[list[SourceView], str]:
        page = page_request(page_size, page_token, {})
        async with self.database.read(caller.organization_id) as session:
            rows = (await session.scalars(oldest_first(select(Source), Source, page))).all()
            sources, token = cut_page(rows, page, created_key)
            return await self._views(session, sources), token

    async def update(
        self, caller: Caller, source_id: str, changes: Mapping[str, Any], etag: str
    ) -> SourceView:
        clean = validate_source_fields(changes, creating=False)

        async def work(session: AsyncSession) -> None:
            source = await load(session, Source, source_id, "source", lock=True)
            check_etag(etag, source.version, f"sources/{source_id}")
            if "display_name" in clean:
                source.name = clean["display_name"]
            if "description" in clean:
                source.description = clean["description"]
            source.updated_at = utc_now()

        await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, source_id)

    async def delete(self, caller: Caller, source_id: str, etag: str) -> None:
        """Delete the source, its files and passages (cascades), then its archive."""

        async def work(session: AsyncSession) -> list[str]:
            source = await load(session, Source, source_id, "source", lock=True)
            check_etag(etag, source.version, f"sources/{source_id}")
            file_ids = list(
                (
                    await session.scalars(
                        select(SourceFile.id).where(SourceFile.source_id == source_id)
                    )
                ).all()
            )
            agent_ids = (
                await session.scalars(
                    select(SourceAgent.agent_id).where(SourceAgent.source_id == source_id)
                )
            ).all()
            archive_id = source.archive_id
            await session.execute(delete(Source).where(Source.id == source_id))
            await session.execute(delete(Archive).where(Archive.id == archive_id))
            for agent_id in agent_ids:  # as if detached: agents left without files lose the tools
                await forget_source_files(session, agent_id, source_id)
            return file_ids

        file_ids = await self.database.run_transaction(work, caller.organization_id)
        await self.runner.cancel(file_ids)

    async def attach(self, caller: Caller, source_id: str, agent_id: str) -> SourceView:
        async def work(session: AsyncSession) -> None:
            await load(session, Source, source_id, "source")
            await load(session, Agent, agent_id, "agent")
            linked = await session.get(SourceAgent, (source_id, agent_id))
            if linked is None:
                session.add(SourceAgent(source_id=source_id, agent_id=agent_id))
                # An agent with files gets the tools that read them.
                await give_file_tools(session, agent_id)

        await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, source_id)

    async def detach(self, caller: Caller, source_id: str, agent_id: str) -> SourceView:
        async def work(session: AsyncSession) -> None:
            await load(session, Source, source_id, "source")
            await load(session, Agent, agent_id, "agent")
            await session.execute(
                delete(SourceAgent).where(
                    SourceAgent.source_id == source_id, SourceAgent.agent_id == agent_id
                )
            )
            await forget_source_files(session, agent_id, source_id)

        await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, source_id)

    async def _views(self, session: AsyncSession, sources: list[Source]) -> list[SourceView]:
        """Sources with their agents and file counts, in two queries for the page."""
        ids = [source.id for source in sources]
        agents: dict[str, list[str]] = {source_id: [] for source_id in ids}
        counts: dict[str, int] = {}
        if ids:
            links = await session.execute(
                select(SourceAgent.source_id, SourceAgent.agent_id)
                .where(SourceAgent.source_id.in_(ids))
                .order_by(SourceAgent.agent_id)
            )
            for source_id, agent_id in links:
                agents[source_id].append(agent_id)
            totals = await session.execute(
                select(SourceFile.source_id, func.count())
                .where(SourceFile.source_id.in_(ids))
                .group_by(SourceFile.source_id)
            )
            counts = {source_id: int(count) for source_id, count in totals}
        return [SourceView(s, agents[s.id], counts.get(s.id, 0)) for s in sources]

    # --- files -----------------------------------------------------------------------

    async def upload(
        self,
        caller: Caller,
        header: UploadHeader,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
    ) -> SourceFile:
        """Store an uploaded file and queue its ingestion; returns the file (QUEUED)."""
        file_name = validate_file_name(header.file_name)
        media_type = resolve_media_type(header)
        check_request_id(header.request_id, "header.request_id")
        # The source must exist before the client sends megabytes for nothing.
        async with self.database.read(caller.organization_id) as session:
            await load(session, Source, header.source_id, "source")
        data = await read_upload(chunks, max_bytes)

        async def create(session: AsyncSession) -> str:
            await load(session, Source, header.source_id, "source")
            file = SourceFile(
                source_id=header.source_id,
                file_name=file_name,
                media_type=media_type,
                size_bytes=len(data),
                status=FileStatus.QUEUED,
                error="",
                chunks_total=0,
                chunks_done=0,
                page_count=0,
                attempts=0,
            )
            session.add(file)
            await session.flush()
            session.add(FileContent(file_id=file.id, data=data))
            return file.id

        file_id = await create_once(
            self.database, caller.organization_id, "UploadFile", header.request_id, create
        )
        # Read before submitting: once the ingestion task runs, the row can already say
        # PROCESSING, and the answer to an upload should be the file as it was stored.
        # Submitted even if the caller goes away meanwhile: the file is stored.
        try:
            return await self.get_file(caller, header.source_id, file_id)
        finally:
            self.runner.submit(file_id, caller.organization_id)

    async def get_file(
        self, caller: Caller, source_id: str, file_id: str, *, with_text: bool = False
    ) -> SourceFile:
        async with self.database.read(caller.organization_id) as session:
            return await self._file(session, source_id, file_id, with_text=with_text)

    async def list_files(
        self, caller: Caller, source_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[SourceFile], str]:
        page = page_request(page_size, page_token, {"source": source_id})
        query = (
            select(SourceFile)
            .where(SourceFile.source_id == source_id)
            .options(defer(SourceFile.text))
        )
        async with self.database.read(caller.organization_id) as session:
            await load(session, Source, source_id, "source")
            rows = (await session.scalars(oldest_first(query, SourceFile, page))).all()
            return cut_page(rows, page, created_key)

    async def delete_file(self, caller: Caller, source_id: str, file_id: str) -> None:
        """Delete the file; its passages and stored bytes go with it (cascades)."""

        async def work(session: AsyncSession) -> None:
            await self._file(session, source_id, file_id)
            await session.execute(delete(SourceFile).where(SourceFile.id == file_id))

        await self.database.run_transaction(work, caller.organization_id)
        await self.runner.cancel([file_id])

    async def watch_file(
        self, caller: Caller, source_id: str, file_id: str
    ) -> AsyncIterator[SourceFile]:
        """The file now, then at each change of its progress, until a terminal state."""
        last: tuple[Any, ...] | None = None
        while True:
            # Taken before the read, so that a change after the read is not missed.
            changed = self.runner.signal(file_id)
            file = await self.get_file(caller, source_id, file_id)
            seen = (file.status, file.chunks_total, file.chunks_done, file.error)
            if seen != last:
                last = seen
                yield file
            if FileStatus(file.status).terminal:
                self.runner.forget(file_id, changed)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), WATCH_POLL_SECONDS)

    async def _file(
        self, session: AsyncSession, source_id: str, file_id: str, *, with_text: bool = False
    ) -> SourceFile:
        query = select(SourceFile).where(
            SourceFile.id == file_id, SourceFile.source_id == source_id
        )
        if not with_text:
            query = query.options(defer(SourceFile.text))
        file = await session.scalar(query)
        if file is None:
            raise NotFoundError("file", file_id)
        return file
