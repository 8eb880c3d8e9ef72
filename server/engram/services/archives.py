"""Archives: the collections of passages that make up agents' archival memory.

Every agent has a default archive, where its ``archival_memory_insert`` tool
writes.  It is created the first time the agent needs it (see
:func:`ensure_default_archive`) with the agent's embedding handle.  Other
archives are created through the API and attached to any number of agents,
which then search them too (shared archives).

An archive's embedding handle is fixed when it is created: every passage in
it is embedded by that model, so its vectors can be compared with one
another and with a query embedded by the same model.  Archives of different
models coexist; a search over several embeds the query once per model.

Archives that belong to a data source (``kind = "source"``) are that
source's business: this service neither lists nor serves them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from engram.adapters.embeddings.registry import EmbeddingRegistry
from engram.adapters.llm.errors import ProviderRejectedRequestError
from engram.services.caller import Caller
from engram.services.common import check_etag, clean_description, clean_display_name, load
from engram.services.errors import FailedPreconditionError, FieldViolation, InvalidArgumentError
from engram.services.idempotency import create_once
from engram.services.pagination import created_key, cut_page, oldest_first, page_request
from engram.store.database import Database
from engram.store.errors import NotFoundError
from engram.store.models import Agent, Archive, ArchiveAgent, Passage
from engram.store.types import utc_now

# The kind of the archives this service manages (sources own the others).
AGENT_ARCHIVE_KIND = "agent"
MAX_DISPLAY_NAME_LENGTH = 200
MAX_HANDLE_LENGTH = 300
UPDATABLE_FIELDS = frozenset({"display_name", "description", "embedding"})


@dataclass(frozen=True)
class ArchiveView:
    """An archive with what the API shows beside it."""

    archive: Archive
    agent_ids: list[str]
    default_for: str | None  # the agent whose default archive this is
    passage_count: int


def embedding_of(archive: Archive, registry: EmbeddingRegistry) -> str:
    """The handle an archive's passages are embedded with.

    Archives written before handles were recorded use the server's default.
    """
    return archive.embedding or registry.default_handle


def validate_archive_fields(values: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """Check the archive fields present in ``values``; returns them cleaned."""
    violations: list[FieldViolation] = []
    clean = dict(values)
    clean_display_name(
        clean, "archive.display_name", MAX_DISPLAY_NAME_LENGTH, violations, creating=creating
    )
    clean_description(clean)
    handle = str(clean.get("embedding") or "")
    if handle and (
        len(handle) > MAX_HANDLE_LENGTH or not all(part for part in handle.partition("/")[::2])
    ):
        violations.append(
            FieldViolation("archive.embedding", "must be a handle of the form provider/model")
        )
    if violations:
        raise InvalidArgumentError(violations)
    return clean


async def load_archive(session: AsyncSession, archive_id: str, *, lock: bool = False) -> Archive:
    """An archive of the caller's organization that this service manages, or NOT_FOUND."""
    archive = await load(session, Archive, archive_id, "archive", lock=lock)
    if archive.kind != AGENT_ARCHIVE_KIND:
        raise NotFoundError("archive", archive_id)
    return archive


async def agent_archives(session: AsyncSession, agent_id: str) -> list[Archive]:
    """Every archive attached to the agent (its default one included), oldest first."""
    return list(
        (
            await session.scalars(
                select(Archive)
                .join(ArchiveAgent, ArchiveAgent.archive_id == Archive.id)
                .where(ArchiveAgent.agent_id == agent_id, Archive.kind == AGENT_ARCHIVE_KIND)
                .order_by(Archive.created_at, Archive.id)
            )
        ).all()
    )


async def default_archive(session: AsyncSession, agent_id: str) -> Archive | None:
    """The agent's default archive, if it has one yet."""
    return (
        await session.scalars(
            select(Archive)
            .join(ArchiveAgent, ArchiveAgent.archive_id == Archive.id)
            .where(ArchiveAgent.agent_id == agent_id, ArchiveAgent.is_default.is_(True))
        )
    ).first()


async def ensure_default_archive(session: AsyncSession, agent: Agent, handle: str) -> Archive:
    """The agent's default archive, created with ``handle`` if it has none yet.

    Race-safe: a unique index allows one default link per agent.  When two
    first inserts race, the loser's link fails in a savepoint (on PostgreSQL
    after waiting for the winner to commit), which also undoes its archive;
    it then reads the winner's archive.
    """
    existing = await default_archive(session, agent.id)
    if existing is not None:
        return existing
    archive = Archive(
        name=f"{agent.name} memories"[:MAX_DISPLAY_NAME_LENGTH],
        description=f"The default archival memory of agents/{agent.id}.",
        embedding=handle,
        kind=AGENT_ARCHIVE_KIND,
    )
    try:
        async with session.begin_nested():
            session.add(archive)
            await session.flush()
            session.add(ArchiveAgent(archive_id=archive.id, agent_id=agent.id, is_default=True))
            await session.flush()
        return archive
    except IntegrityError:
        winner = await default_archive(session, agent.id)
        if winner is None:
            raise
        return winner


async def archive_views(session: AsyncSession, archives: Sequence[Archive]) -> list[ArchiveView]:
    """Archives with their agents and passage counts, in two queries for a whole page."""
    ids = [archive.id for archive in archives]
    agents: dict[str, list[str]] = {archive_id: [] for archive_id in ids}
    defaults: dict[str, str] = {}
    counts: dict[str, int] = {}
    if ids:
        links = await session.execute(
            select(ArchiveAgent.archive_id, ArchiveAgent.agent_id, ArchiveAgent.is_default)
            .where(ArchiveAgent.archive_id.in_(ids))
            .order_by(ArchiveAgent.agent_id)
        )
        for archive_id, agent_id, is_default in links:
            agents[archive_id].append(agent_id)
            if is_default:
                defaults[archive_id] = agent_id
        totals = await session.execute(
            select(Passage.archive_id, func.count())
            .where(Passage.archive_id.in_(ids))
            .group_by(Passage.archive_id)
        )
        counts = {archive_id: int(count) for archive_id, count in totals}
    return [
        ArchiveView(
            archive, agents[archive.id], defaults.get(archive.id), counts.get(archive.id, 0)
        )
        for archive in archives
    ]


class ArchiveService:
    """Archives and the agents they are attached to."""

    def __init__(self, database: Database, embeddings: EmbeddingRegistry) -> None:
        self.database = database
        self.embeddings = embeddings

    async def create(
        self, caller: Caller, values: Mapping[str, Any], request_id: str
    ) -> ArchiveView:
        clean = validate_archive_fields(values, creating=True)
        handle = str(clean.get("embedding") or "") or self.embeddings.default_handle
        self._check_handle(handle)

        async def create(session: AsyncSession) -> str:
            archive = Archive(
                name=clean["display_name"],
                description=clean.get("description", ""),
                embedding=handle,
                kind=AGENT_ARCHIVE_KIND,
            )
            session.add(archive)
            await session.flush()
            return archive.id

        archive_id = await create_once(
            self.database, caller.organization_id, "CreateArchive", request_id, create
        )
        return await self.get(caller, archive_id)

    async def get(self, caller: Caller, archive_id: str) -> ArchiveView:
        async with self.database.read(caller.organization_id) as session:
            archive = await load_archive(session, archive_id)
            return (await archive_views(session, [archive]))[0]

    async def list_page(
        self, caller: Caller, *, agent_id: str, page_size: int, page_token: str
    ) -> tuple[list[ArchiveView], str]:
        page = page_request(page_size, page_token, {"agent": agent_id})
        query = select(Archive).where(Archive.kind == AGENT_ARCHIVE_KIND)
        if agent_id:
            query = query.join(ArchiveAgent, ArchiveAgent.archive_id == Archive.id).where(
                ArchiveAgent.agent_id == agent_id
            )
        async with self.database.read(caller.organization_id) as session:
            if agent_id:
                await load(session, Agent, agent_id, "agent")
            rows = (await session.scalars(oldest_first(query, Archive, page))).all()
            archives, token = cut_page(rows, page, created_key)
            return await archive_views(session, archives), token

    async def update(
        self, caller: Caller, archive_id: str, changes: Mapping[str, Any], etag: str
    ) -> ArchiveView:
        clean = validate_archive_fields(changes, creating=False)

        async def work(session: AsyncSession) -> None:
            archive = await load_archive(session, archive_id, lock=True)
            check_etag(etag, archive.version, f"archives/{archive_id}")
            # Naming the current model (or none, as a "*" mask does) is no change.
            handle = clean.get("embedding")
            if handle and handle != embedding_of(archive, self.embeddings):
                raise InvalidArgumentError.field(
                    "archive.embedding",
                    "cannot change: every passage of the archive was embedded by its model; "
                    "create another archive for another model",
                )
            if "display_name" in clean:
                archive.name = clean["display_name"]
            if "description" in clean:
                archive.description = clean["description"]
            archive.updated_at = utc_now()

        await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, archive_id)

    async def delete(self, caller: Caller, archive_id: str, etag: str, force: bool) -> None:
        async def work(session: AsyncSession) -> None:
            archive = await load_archive(session, archive_id, lock=True)
            check_etag(etag, archive.version, f"archives/{archive_id}")
            attached = await session.scalar(
                select(func.count())
                .select_from(ArchiveAgent)
                .where(ArchiveAgent.archive_id == archive_id)
            )
            if attached and not force:
                raise FailedPreconditionError(
                    f"archives/{archive_id} is attached to {attached} agent(s); detach it first "
                    "or delete with force",
                    subject=f"archives/{archive_id}",
                    violation_type="ARCHIVE_IN_USE",
                )
            # Passages and links go with it (ON DELETE CASCADE; on SQLite the
            # vector tables follow through their triggers).
            await session.delete(archive)

        await self.database.run_transaction(work, caller.organization_id)

    async def attach(self, caller: Caller, archive_id: str, agent_id: str) -> ArchiveView:
        async def work(session: AsyncSession) -> None:
            await load(session, Agent, agent_id, "agent")
            await load_archive(session, archive_id)
            if await session.get(ArchiveAgent, (archive_id, agent_id)) is None:
                session.add(ArchiveAgent(archive_id=archive_id, agent_id=agent_id))

        await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, archive_id)

    async def detach(self, caller: Caller, archive_id: str, agent_id: str) -> ArchiveView:
        async def work(session: AsyncSession) -> None:
            await load(session, Agent, agent_id, "agent")
            await load_archive(session, archive_id)
            link = await session.get(ArchiveAgent, (archive_id, agent_id))
            if link is None:
                return
            if link.is_default:
                raise FailedPreconditionError(
                    f"archives/{archive_id} is the default archive of agents/{agent_id}, where "
                    "its archival_memory_insert tool writes; it cannot be detached from it",
                    subject=f"archives/{archive_id}",
                    violation_type="DEFAULT_ARCHIVE",
                )
            await session.delete(link)

        await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, archive_id)

    def _check_handle(self, handle: str) -> None:
        """Refuse a handle no embedder can serve before anything is stored with it."""
        try:
            self.embeddings.resolve(handle)
        except ProviderRejectedRequestError as error:
            raise InvalidArgumentError.field("archive.embedding", str(error)) from error
