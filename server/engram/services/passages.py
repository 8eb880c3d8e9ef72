"""Passages: storing text in archives and finding it again by meaning.

Every write embeds first and writes after: the embedding model (local CPU
work or a remote call) runs outside any database transaction, then one short
transaction stores the passages with their vectors.  A failing provider
therefore leaves nothing half stored and never holds a connection or, on
SQLite, the single writer slot.

The model is always the archive's (see :mod:`engram.services.archives`); an
agent's default archive takes the agent's embedding handle when it is
created, so the agent's handle is what embeds its memories and its searches.

Clients reach this through ArchiveService; agents through the
``archival_memory_insert`` and ``archival_memory_search`` tools at the end of
this module, which get their mistakes back as failed tool results.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from engram.adapters.embeddings.embedder import Vectors
from engram.adapters.embeddings.registry import EmbeddingRegistry
from engram.adapters.llm.errors import ProviderError
from engram.services.archives import (
    AGENT_ARCHIVE_KIND,
    agent_archives,
    default_archive,
    embedding_of,
    ensure_default_archive,
    load_archive,
)
from engram.services.caller import Caller
from engram.services.common import load
from engram.services.errors import FieldViolation, InvalidArgumentError
from engram.services.idempotency import check_request_id, create_once
from engram.services.pagination import (
    InvalidPageTokenError,
    PageRequest,
    created_key,
    cut_page,
    oldest_first,
    page_request,
)
from engram.services.runtime.turn import ToolOutcome
from engram.store.database import Database
from engram.store.errors import ConcurrentUpdateError, NotFoundError
from engram.store.ids import IdPrefix, new_id
from engram.store.models import Agent, Archive, Passage
from engram.store.passage_search import NearestQuery, VectorIndexes, nearest_passages

MAX_TEXT_LENGTH = 100_000
MAX_TAG_LENGTH = 200
MAX_BATCH = 1000
DEFAULT_TOP_K = 10
MAX_TOP_K = 100
# The tools' own limits: a handful of results is what fits in a context window.
TOOL_DEFAULT_TOP_K = 5
TOOL_MAX_TOP_K = 50
RELEVANCE_DIGITS = 3
# A default archive created between our read and our write may have another
# model than the one we embedded with; embedding again once settles it.
STORE_ATTEMPTS = 2

ARCHIVAL_MEMORY_INSERT = "archival_memory_insert"
ARCHIVAL_MEMORY_SEARCH = "archival_memory_search"
ARCHIVAL_TOOLS = frozenset({ARCHIVAL_MEMORY_INSERT, ARCHIVAL_MEMORY_SEARCH})


@dataclass(frozen=True)
class Parent:
    """Where passages live: one archive, or an agent (its default archive, or all of its)."""

    archive_id: str = ""
    agent_id: str = ""

    def fingerprint(self) -> str:
        return f"archives/{self.archive_id}" if self.archive_id else f"agents/{self.agent_id}"


@dataclass(frozen=True)
class NewPassage:
    text: str
    tags: Sequence[str] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassageQuery:
    """A search by meaning and its filters; ``start`` and ``end`` are inclusive."""

    query: str
    top_k: int = 0
    tags: Sequence[str] = ()
    match_all_tags: bool = False
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class PassageHit:
    """A passage found, and its cosine similarity to the query (1 = same direction)."""

    passage: Passage
    score: float


@dataclass(frozen=True)
class _Target:
    """The model a write embeds with, as read before embedding.

    The write checks it again: an agent's default archive may be created
    meanwhile (by a racing first insert) with another model.
    """

    handle: str


class _ModelChanged(Exception):
    """The archive's model is not the one the texts were embedded with."""


def validate_passages(passages: Sequence[NewPassage], prefix: str) -> list[NewPassage]:
    """Check texts and tags; returns them cleaned (NUL bytes out, tags deduplicated)."""
    violations: list[FieldViolation] = []
    clean: list[NewPassage] = []
    for index, passage in enumerate(passages):
        where = prefix.format(index=index)
        text = passage.text.replace("\x00", "")
        if not text.strip():
            violations.append(FieldViolation(f"{where}.text", "is required"))
        elif len(text) > MAX_TEXT_LENGTH:
            violations.append(
                FieldViolation(f"{where}.text", f"must be at most {MAX_TEXT_LENGTH} characters")
            )
        tags = list(dict.fromkeys(str(tag) for tag in passage.tags))
        if any(not tag or len(tag) > MAX_TAG_LENGTH for tag in tags):
            violations.append(
                FieldViolation(
                    f"{where}.tags", f"each tag must be 1 to {MAX_TAG_LENGTH} characters"
                )
            )
        clean.append(NewPassage(text, tags, dict(passage.metadata)))
    if violations:
        raise InvalidArgumentError(violations)
    return clean


def batch_passage_ids(request_id: str, count: int) -> list[str]:
    """The ids of a batch's passages, derived from its request id.

    A retried batch then knows which passages the first call stored: one
    idempotency record covers them all.  The ids are UUID4-shaped so that
    they pass the same checks as any other.
    """
    ids = []
    for index in range(count):
        digest = uuid.uuid5(uuid.NAMESPACE_URL, f"engram:passage-batch:{request_id}:{index}")
        ids.append(f"{IdPrefix.PASSAGE.value}-{uuid.UUID(bytes=digest.bytes, version=4)}")
    return ids


class PassageService:
    """Passages of archives: stored, listed, deleted, and searched by meaning.

    Keep one per process: it holds the set of vector indexes already made.
    """

    def __init__(self, database: Database, embeddings: EmbeddingRegistry) -> None:
        self.database = database
        self.embeddings = embeddings
        self.indexes = VectorIndexes(database)

    # --- writing ---------------------------------------------------------------------------

    async def create(
        self, caller: Caller, parent: Parent, passage: NewPassage, request_id: str
    ) -> Passage:
        clean = validate_passages([passage], "passage")
        check_request_id(request_id)
        stored = await self._store(caller.organization_id, parent, clean, request_id, batch=False)
        return stored[0]

    async def batch_create(
        self, caller: Caller, parent: Parent, passages: Sequence[NewPassage], request_id: str
    ) -> list[Passage]:
        if not passages:
            raise InvalidArgumentError.field("passages", "needs at least one passage")
        if len(passages) > MAX_BATCH:
            raise InvalidArgumentError.field("passages", f"at most {MAX_BATCH} per call")
        clean = validate_passages(passages, "passages[{index}]")
        check_request_id(request_id)
        return await self._store(caller.organization_id, parent, clean, request_id, batch=True)

    async def insert_for_agent(
        self, organization_id: str, agent_id: str, text: str, tags: Sequence[str]
    ) -> Passage:
        """Store ``text`` in the agent's default archive (the insert tool)."""
        clean = validate_passages([NewPassage(text, tags)], "passage")
        stored = await self._store(
            organization_id, Parent(agent_id=agent_id), clean, "", batch=False
        )
        return stored[0]

    async def _store(
        self,
        organization_id: str,
        parent: Parent,
        passages: Sequence[NewPassage],
        request_id: str,
        *,
        batch: bool,
    ) -> list[Passage]:
        texts = [passage.text for passage in passages]
        for attempt in range(1, STORE_ATTEMPTS + 1):
            target = await self._target(organization_id, parent)
            vectors = await self._embed(target.handle, texts)
            await self.indexes.ensure(int(vectors.shape[1]))
            try:
                return await self._write(
                    organization_id, parent, target, passages, vectors, request_id, batch=batch
                )
            except _ModelChanged:
                if attempt == STORE_ATTEMPTS:
                    break
        raise ConcurrentUpdateError(
            f"the archive of {parent.fingerprint()} changed its embedding model during the "
            "call; retry"
        )

    async def _target(self, organization_id: str, parent: Parent) -> _Target:
        async with self.database.read(organization_id) as session:
            if parent.archive_id:
                archive = await load_archive(session, parent.archive_id)
                return _Target(embedding_of(archive, self.embeddings))
            agent = await load(session, Agent, parent.agent_id, "agent")
            found = await default_archive(session, agent.id)
            if found is not None:
                return _Target(embedding_of(found, self.embeddings))
            return _Target(agent.embedding or self.embeddings.default_handle)

    async def _write(
        self,
        organization_id: str,
        parent: Parent,
        target: _Target,
        passages: Sequence[NewPassage],
        vectors: Vectors,
        request_id: str,
        *,
        batch: bool,
    ) -> list[Passage]:
        # Ids chosen here keep a batch in the order it was given (and, derived
        # from a request id, let a retry find the first call's passages).
        ids = [new_id(IdPrefix.PASSAGE) for _ in passages]
        if batch and request_id:
            ids = batch_passage_ids(request_id, len(passages))

        async def create(session: AsyncSession) -> str:
            archive = await self._archive_for_write(session, parent, target)
            session.add_all(
                Passage(
                    id=passage_id,
                    archive_id=archive.id,
                    text=passage.text,
                    embedding=vector.tolist(),
                    embedding_dim=len(vector),
                    embedding_model=target.handle,
                    tags=list(passage.tags),
                    metadata_=dict(passage.metadata),
                )
                for passage_id, passage, vector in zip(ids, passages, vectors, strict=True)
            )
            await session.flush()
            return ids[0]

        method = "BatchCreatePassages" if batch else "CreatePassage"
        first_id = await create_once(self.database, organization_id, method, request_id, create)
        async with self.database.read(organization_id) as session:
            if batch:
                return await _passages_by_id(session, ids)
            return [await _load_passage(session, first_id)]

    async def _archive_for_write(
        self, session: AsyncSession, parent: Parent, target: _Target
    ) -> Archive:
        if parent.archive_id:
            archive = await load_archive(session, parent.archive_id)
        else:
            agent = await load(session, Agent, parent.agent_id, "agent")
            archive = await ensure_default_archive(session, agent, target.handle)
        if embedding_of(archive, self.embeddings) != target.handle:
            raise _ModelChanged
        return archive

    # --- reading ---------------------------------------------------------------------------

    async def get(self, caller: Caller, archive_id: str, passage_id: str) -> Passage:
        async with self.database.read(caller.organization_id) as session:
            return await _passage_in(session, archive_id, passage_id)

    async def delete(self, caller: Caller, archive_id: str, passage_id: str) -> None:
        async def work(session: AsyncSession) -> None:
            passage = await _passage_in(session, archive_id, passage_id)
            await session.delete(passage)

        await self.database.run_transaction(work, caller.organization_id)

    async def list_page(
        self,
        caller: Caller,
        parent: Parent,
        *,
        page_size: int,
        page_token: str,
        newest_first: bool = False,
    ) -> tuple[list[Passage], str]:
        page = page_request(
            page_size, page_token, {"parent": parent.fingerprint(), "newest_first": newest_first}
        )
        async with self.database.read(caller.organization_id) as session:
            archive_ids = await self._readable_archives(session, parent)
            query = _passages().where(Passage.archive_id.in_(archive_ids))
            if newest_first:
                query = _newest_first(query, page)
            else:
                query = oldest_first(query, Passage, page)
            rows = (await session.scalars(query)).all()
        return cut_page(rows, page, created_key)

    async def search(self, caller: Caller, parent: Parent, query: PassageQuery) -> list[PassageHit]:
        """The passages closest in meaning to ``query.query``, best first."""
        if not query.query.strip():
            raise InvalidArgumentError.field("query", "is required")
        if query.top_k < 0:
            raise InvalidArgumentError.field("top_k", "must not be negative")
        if query.start and query.end and query.end < query.start:
            raise InvalidArgumentError.field("end_time", "must not be before start_time")
        top_k = min(query.top_k or DEFAULT_TOP_K, MAX_TOP_K)
        return await self._search(caller.organization_id, parent, query, top_k)

    async def search_for_agent(
        self, organization_id: str, agent_id: str, query: PassageQuery
    ) -> list[PassageHit]:
        """The search tool: every archive of the agent, with the tool's own limits."""
        top_k = min(query.top_k or TOOL_DEFAULT_TOP_K, TOOL_MAX_TOP_K)
        return await self._search(organization_id, Parent(agent_id=agent_id), query, top_k)

    async def _search(
        self, organization_id: str, parent: Parent, query: PassageQuery, top_k: int
    ) -> list[PassageHit]:
        async with self.database.read(organization_id) as session:
            archives = await self._readable_archive_rows(session, parent)
        return await self.search_archives(organization_id, archives, query, top_k)

    async def search_archives(
        self,
        organization_id: str,
        archives: Sequence[Archive],
        query: PassageQuery,
        top_k: int,
    ) -> list[PassageHit]:
        """The ``top_k`` passages of ``archives`` closest to the query, best first.

        Archives are searched with their own embedding model each: the query
        is embedded once per model, before any database work, and the hits
        of every model are merged by score.
        """
        by_model: dict[str, list[str]] = {}
        for archive in archives:
            by_model.setdefault(embedding_of(archive, self.embeddings), []).append(archive.id)
        # One embedding of the query per model, before any database work.
        probes: dict[str, list[float]] = {}
        for handle in by_model:
            vector = (await self._embed(handle, [query.query]))[0]
            await self.indexes.ensure(len(vector))
            probes[handle] = vector.tolist()
        hits: list[PassageHit] = []
        async with self.database.read(organization_id) as session:
            for handle, archive_ids in by_model.items():
                nearest = NearestQuery(
                    embedding=probes[handle],
                    model=handle,
                    archive_ids=archive_ids,
                    top_k=top_k,
                    tags=tuple(query.tags),
                    match_all_tags=query.match_all_tags,
                    start=query.start,
                    end=query.end,
                )
                for found in await nearest_passages(session, nearest):
                    hits.append(PassageHit(found.passage, 1.0 - found.distance))
        hits.sort(key=lambda hit: (-hit.score, hit.passage.id))
        return hits[:top_k]

    async def _readable_archive_rows(self, session: AsyncSession, parent: Parent) -> list[Archive]:
        if parent.archive_id:
            return [await load_archive(session, parent.archive_id)]
        await load(session, Agent, parent.agent_id, "agent")
        return await agent_archives(session, parent.agent_id)

    async def _readable_archives(self, session: AsyncSession, parent: Parent) -> list[str]:
        return [archive.id for archive in await self._readable_archive_rows(session, parent)]

    async def _embed(self, handle: str, texts: Sequence[str]) -> Vectors:
        return await self.embeddings.resolve(handle).embed(texts)


# --- queries -------------------------------------------------------------------------------


def _passages() -> Select[Passage]:
    # Callers want the text; decoding a vector per row is wasted work.
    return select(Passage).options(defer(Passage.embedding))


def _newest_first(query: Select[Any], page: PageRequest) -> Select[Any]:
    query = query.order_by(Passage.created_at.desc(), Passage.id.desc()).limit(page.size + 1)
    if page.after is None:
        return query
    if len(page.after) != 2:
        raise InvalidPageTokenError.field("page_token", "is not a token this server issued")
    try:
        created_at = datetime.fromisoformat(str(page.after[0]))
    except ValueError as error:
        raise InvalidPageTokenError.field(
            "page_token", "is not a token this server issued"
        ) from error
    last_id = str(page.after[1])
    return query.where(
        or_(
            Passage.created_at < created_at,
            and_(Passage.created_at == created_at, Passage.id < last_id),
        )
    )


async def _load_passage(session: AsyncSession, passage_id: str) -> Passage:
    passage = (await session.scalars(_passages().where(Passage.id == passage_id))).first()
    if passage is None:
        raise NotFoundError("passage", passage_id)
    return passage


async def _passages_by_id(session: AsyncSession, ids: Sequence[str]) -> list[Passage]:
    """The passages with these ids that still exist, in the order of ``ids``."""
    rows = (await session.scalars(_passages().where(Passage.id.in_(list(ids))))).all()
    found = {row.id: row for row in rows}
    return [found[passage_id] for passage_id in ids if passage_id in found]


async def _passage_in(session: AsyncSession, archive_id: str, passage_id: str) -> Passage:
    """The passage, if it is in that archive (one this service serves); else NOT_FOUND."""
    passage = (
        await session.scalars(
            _passages()
            .join(Archive, Archive.id == Passage.archive_id)
            .where(
                Passage.id == passage_id,
                Passage.archive_id == archive_id,
                Archive.kind == AGENT_ARCHIVE_KIND,
            )
        )
    ).first()
    if passage is None:
        raise NotFoundError("passage", passage_id)
    return passage


# --- the archival memory tools -------------------------------------------------------------


async def run_archival_tool(
    service: PassageService,
    organization_id: str,
    agent_id: str,
    name: str,
    arguments: Mapping[str, Any],
) -> ToolOutcome:
    """Run ``archival_memory_insert`` or ``archival_memory_search`` for the agent.

    Bad arguments and a failing embedding provider come back as a failed
    result the model can read and act on; they never end the turn.
    """
    try:
        if name == ARCHIVAL_MEMORY_INSERT:
            return await _insert_tool(service, organization_id, agent_id, arguments)
        return await _search_tool(service, organization_id, agent_id, arguments)
    except (ValueError, InvalidArgumentError) as error:
        return ToolOutcome(str(error), ok=False)
    except ProviderError as error:
        return ToolOutcome(f"Archival memory is unavailable right now: {error}", ok=False)


async def _insert_tool(
    service: PassageService, organization_id: str, agent_id: str, arguments: Mapping[str, Any]
) -> ToolOutcome:
    content = arguments.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ValueError("The argument 'content' must be the text to remember.")
    tags = _tool_tags(arguments.get("tags"))
    await service.insert_for_agent(organization_id, agent_id, content, tags)
    suffix = f" with tags {', '.join(tags)}" if tags else ""
    return ToolOutcome(f"Stored in archival memory{suffix}.")


async def _search_tool(
    service: PassageService, organization_id: str, agent_id: str, arguments: Mapping[str, Any]
) -> ToolOutcome:
    text = arguments.get("query")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("The argument 'query' must say what to look for.")
    mode = arguments.get("tag_match_mode") or "any"
    if mode not in ("any", "all"):
        raise ValueError("The argument 'tag_match_mode' must be 'any' or 'all'.")
    top_k = arguments.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError("The argument 'top_k' must be a positive integer.")
    start, end = arguments.get("start_datetime"), arguments.get("end_datetime")
    query = PassageQuery(
        query=text,
        top_k=top_k or 0,
        tags=_tool_tags(arguments.get("tags")),
        match_all_tags=mode == "all",
        start=_tool_moment(start, "start_datetime", end_of_day=False) if start else None,
        end=_tool_moment(end, "end_datetime", end_of_day=True) if end else None,
    )
    hits = await service.search_for_agent(organization_id, agent_id, query)
    if not hits:
        return ToolOutcome(f"Nothing in archival memory matches {text!r}.")
    return ToolOutcome(json.dumps([_tool_result(hit) for hit in hits], ensure_ascii=False))


def _tool_result(hit: PassageHit) -> dict[str, Any]:
    passage = hit.passage
    return {
        "time": passage.created_at.isoformat(timespec="seconds"),
        "tags": list(passage.tags),
        "text": passage.text,
        "relevance": float(f"{hit.score:.{RELEVANCE_DIGITS}g}"),
    }


def _tool_tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(tag, str) and tag for tag in value):
        raise ValueError("The argument 'tags' must be a list of non-empty strings.")
    return list(dict.fromkeys(value))


def _tool_moment(value: Any, name: str, *, end_of_day: bool) -> datetime:
    """An ISO date or date-time; a bare date covers its whole day (UTC)."""
    text = str(value).strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1, microseconds=-1) if end_of_day else moment
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"The argument {name!r} must be an ISO date or time such as 2025-01-31 "
            "or 2025-01-31T14:00:00Z."
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
