"""Nearest-neighbour search over archival passages, with one index per dimension.

Several embedding models can share the ``passages`` table, so vectors are
stored at their own width (never zero-padded) with ``embedding_dim`` and
``embedding_model`` beside them.  Each dimension in use gets its own index,
created the first time this process embeds at that width:

* PostgreSQL: a partial HNSW expression index (cosine) over
  ``embedding::vector(n)`` restricted to ``embedding_dim = n``; pgvector's
  HNSW stops at 2,000 dimensions for ``vector``, so 2,001-4,000 use
  ``halfvec(n)``; wider vectors are searched exactly.  Filters (archive,
  model, tags, time) are applied during the index scan thanks to pgvector's
  iterative scans, which the engine turns on for every connection.
* SQLite: a ``vec0`` virtual table of sqlite-vec per dimension, partitioned by
  archive so a search only reads the archives it is asked about, kept in step
  with ``passages`` by triggers (which also follow cascading deletes).

The ``passages`` table stays the source of truth; the SQLite tables can be
rebuilt from it, which :meth:`VectorIndexes.ensure` does when it creates one.
A migration that recreates ``passages`` on SQLite (batch mode) drops the
triggers: such a migration must call :func:`drop_sqlite_vector_tables` first
so that the next :meth:`VectorIndexes.ensure` rebuilds them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

from sqlalchemy import Float, Select, bindparam, cast, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from engram.store.database import Database
from engram.store.json_filters import json_list_has_all, json_list_has_any
from engram.store.models import Passage
from engram.store.vectors import (
    EmbeddingVector,
    PgHalfVector,
    PgVector,
    cosine_distance,
    pack_float32,
)

# pgvector's HNSW limits: 2,000 dimensions for vector, 4,000 for halfvec.
HNSW_VECTOR_MAX_DIMENSIONS = 2000
HNSW_HALFVEC_MAX_DIMENSIONS = 4000
# sqlite-vec refuses a KNN query for more than this many neighbours.
SQLITE_VEC_MAX_K = 4096
# How much wider each retry looks when post-filters (tags) removed candidates.
WIDENING_FACTOR = 4
# Advisory lock key that serialises index builds across replicas ("engram-vx").
PG_INDEX_LOCK_KEY = 0x656E6772616D7678 & 0x7FFFFFFFFFFFFFFF

# A SELECT of any columns (Select is variadic over its row's types).
AnySelect: TypeAlias = Select[*tuple[Any, ...]]

SQLITE_TABLE_PREFIX = "passage_vectors_"
PG_INDEX_PREFIX = "ix_passages_embedding_"


@dataclass(frozen=True)
class NearestQuery:
    """What a search asks for; ``archive_ids`` are the archives it may read."""

    embedding: Sequence[float]
    model: str
    archive_ids: Sequence[str]
    top_k: int
    tags: Sequence[str] = ()
    match_all_tags: bool = False
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # inclusive

    @property
    def dimension(self) -> int:
        return len(self.embedding)


@dataclass(frozen=True)
class ScoredPassage:
    """A passage and its cosine distance to the query (0 = same direction)."""

    passage: Passage
    distance: float


def sqlite_vector_table(dimension: int) -> str:
    return f"{SQLITE_TABLE_PREFIX}{_checked_dimension(dimension)}"


def pg_vector_index(dimension: int) -> str:
    return f"{PG_INDEX_PREFIX}{_checked_dimension(dimension)}"


def is_managed_vector_object(name: str | None) -> bool:
    """True for the per-dimension tables and indexes this module creates at run time.

    They are not in the ORM models (their set depends on the data), so the
    migration drift check must not report them.
    """
    return bool(name) and str(name).startswith((SQLITE_TABLE_PREFIX, PG_INDEX_PREFIX))


class VectorIndexes:
    """Creates, once per process, the index that serves one embedding dimension."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._ready: set[int] = set()
        self._lock = asyncio.Lock()

    async def ensure(self, dimension: int) -> None:
        """Make sure ``dimension`` has its index; cheap after the first call."""
        _checked_dimension(dimension)
        if dimension in self._ready:
            return
        async with self._lock:
            if dimension in self._ready:
                return
            if self.database.choice.is_sqlite:
                await self._ensure_sqlite(dimension)
            elif dimension <= HNSW_HALFVEC_MAX_DIMENSIONS:
                await self._ensure_postgres(dimension)
            self._ready.add(dimension)

    async def _ensure_sqlite(self, dimension: int) -> None:
        table = sqlite_vector_table(dimension)
        async with self.database.transaction(None, all_organizations=True) as session:
            exists = await session.scalar(
                text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"),
                {"name": table},
            )
            if exists:
                return
            for statement in _sqlite_vector_ddl(dimension):
                await session.execute(text(statement))

    async def _ensure_postgres(self, dimension: int) -> None:
        index = pg_vector_index(dimension)
        # CREATE INDEX CONCURRENTLY cannot run in a transaction block, and it
        # lets inserts go on while the index builds.
        connection_cm = self.database.engine.connect()
        async with connection_cm as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(
                text("SELECT pg_advisory_lock(:key)"), {"key": PG_INDEX_LOCK_KEY}
            )
            try:
                valid = await connection.scalar(
                    text(
                        "SELECT i.indisvalid FROM pg_class c "
                        "JOIN pg_index i ON i.indexrelid = c.oid "
                        "WHERE c.relname = :name AND pg_table_is_visible(c.oid)"
                    ),
                    {"name": index},
                )
                if valid:
                    return
                if valid is not None:
                    # A build that failed half-way leaves an invalid index behind.
                    await connection.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {index}"))
                await connection.execute(text(_pg_index_ddl(dimension)))
            finally:
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": PG_INDEX_LOCK_KEY}
                )


async def drop_sqlite_vector_tables(session: AsyncSession) -> None:
    """Drop every per-dimension vec0 table and its triggers (they are rebuilt on demand)."""
    names = (
        await session.scalars(
            text(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE :prefix "
                "AND sql LIKE '%USING vec0%'"
            ),
            {"prefix": f"{SQLITE_TABLE_PREFIX}%"},
        )
    ).all()
    for name in names:
        for suffix in ("insert", "delete", "update"):
            await session.execute(text(f"DROP TRIGGER IF EXISTS {name}_{suffix}"))
        await session.execute(text(f"DROP TABLE IF EXISTS {name}"))


async def nearest_passages(session: AsyncSession, query: NearestQuery) -> list[ScoredPassage]:
    """The ``top_k`` passages closest to the query embedding, closest first.

    Only passages embedded by ``query.model`` (and so of the same width) are
    compared: distances between different models' vectors mean nothing.
    """
    if query.top_k <= 0 or not query.archive_ids:
        return []
    _checked_dimension(query.dimension)
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        return await _nearest_sqlite(session, query)
    return await _nearest_postgres(session, query)


# --- PostgreSQL ------------------------------------------------------------


def _pg_vector_type(dimension: int) -> PgVector:
    if dimension <= HNSW_VECTOR_MAX_DIMENSIONS:
        return PgVector(dimension)
    return PgHalfVector(dimension)


def _pg_index_ddl(dimension: int) -> str:
    kind = "vector" if dimension <= HNSW_VECTOR_MAX_DIMENSIONS else "halfvec"
    return (
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {pg_vector_index(dimension)} ON passages "
        f"USING hnsw ((embedding::{kind}({dimension})) {kind}_cosine_ops) "
        f"WHERE embedding_dim = {dimension}"
    )


async def _nearest_postgres(session: AsyncSession, query: NearestQuery) -> list[ScoredPassage]:
    dimension = query.dimension
    if dimension > HNSW_HALFVEC_MAX_DIMENSIONS:
        return await _nearest_exact(session, query)
    # The same expression as the partial index, so the planner can use it.
    vector_type = _pg_vector_type(dimension)
    probe = cast(bindparam("probe", list(query.embedding), type_=vector_type), vector_type)
    distance = cast(
        cast(Passage.embedding, vector_type).op("<=>", return_type=Float())(probe), Float()
    ).label("distance")
    statement = _filtered(select(Passage, distance), query, "postgresql")
    rows = (await session.execute(statement.order_by(distance).limit(query.top_k))).all()
    # Iterative index scans may return neighbours slightly out of order.
    scored = [ScoredPassage(row[0], float(row[1])) for row in rows]
    return sorted(scored, key=lambda item: (item.distance, item.passage.id))


# --- SQLite ----------------------------------------------------------------


def _sqlite_vector_ddl(dimension: int) -> list[str]:
    table = sqlite_vector_table(dimension)
    columns = "(passage_id, archive_id, embedding, embedding_model, created_at)"
    values = "(new.id, new.archive_id, new.embedding, new.embedding_model, new.created_at)"
    wanted = f"new.embedding_dim = {dimension} AND new.embedding IS NOT NULL"
    return [
        f"CREATE VIRTUAL TABLE {table} USING vec0("
        "passage_id TEXT PRIMARY KEY, archive_id TEXT PARTITION KEY, "
        f"embedding FLOAT[{dimension}] distance_metric=cosine, "
        "embedding_model TEXT, created_at TEXT)",
        f"INSERT INTO {table} {columns} "
        "SELECT id, archive_id, embedding, embedding_model, created_at FROM passages "
        f"WHERE embedding_dim = {dimension} AND embedding IS NOT NULL",
        f"CREATE TRIGGER {table}_insert AFTER INSERT ON passages WHEN {wanted} "
        f"BEGIN INSERT INTO {table} {columns} VALUES {values}; END",
        f"CREATE TRIGGER {table}_delete AFTER DELETE ON passages "
        f"WHEN old.embedding_dim = {dimension} "
        f"BEGIN DELETE FROM {table} WHERE passage_id = old.id; END",
        f"CREATE TRIGGER {table}_update AFTER UPDATE OF "
        "embedding, embedding_dim, embedding_model, archive_id, created_at ON passages "
        f"WHEN old.embedding_dim = {dimension} OR new.embedding_dim = {dimension} "
        f"BEGIN DELETE FROM {table} WHERE passage_id = old.id; "
        f"INSERT INTO {table} {columns} SELECT {values[1:-1]} WHERE {wanted}; END",
    ]


async def _nearest_sqlite(session: AsyncSession, query: NearestQuery) -> list[ScoredPassage]:
    table = sqlite_vector_table(query.dimension)
    exists = await session.scalar(
        text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"),
        {"name": table},
    )
    if not exists:
        # Nothing of this width was ever indexed here: search the table itself.
        return await _nearest_exact(session, query)
    k = query.top_k
    while True:
        found = await _sqlite_candidates(session, table, query, k)
        kept = await _load_filtered(session, query, found)
        # Enough survivors, or nothing more to find: done.  Otherwise tags
        # removed candidates; look wider before falling back to an exact scan.
        if len(kept) >= query.top_k or len(found) < k:
            return kept[: query.top_k]
        if k >= SQLITE_VEC_MAX_K:
            return await _nearest_exact(session, query)
        k = min(k * WIDENING_FACTOR, SQLITE_VEC_MAX_K)


async def _sqlite_candidates(
    session: AsyncSession, table: str, query: NearestQuery, k: int
) -> dict[str, float]:
    # No filter on the model here: an archive holds one model's vectors, so the
    # archive partition already selects them, and a metadata filter doubles the
    # scan's cost.  The model is checked again when the rows are loaded.
    conditions = ["embedding MATCH :probe", "k = :k"]
    params: dict[str, Any] = {"probe": pack_float32(query.embedding), "k": min(k, SQLITE_VEC_MAX_K)}
    archive_names = []
    for number, archive_id in enumerate(sorted(set(query.archive_ids))):
        archive_names.append(f":archive_{number}")
        params[f"archive_{number}"] = archive_id
    conditions.append(f"archive_id IN ({', '.join(archive_names)})")
    if query.start is not None:
        conditions.append("created_at >= :start")
        params["start"] = _sqlite_timestamp(query.start)
    if query.end is not None:
        conditions.append("created_at <= :end")
        params["end"] = _sqlite_timestamp(query.end)
    statement = text(f"SELECT passage_id, distance FROM {table} WHERE {' AND '.join(conditions)}")
    rows = (await session.execute(statement, params)).all()
    return {str(passage_id): float(distance) for passage_id, distance in rows}


async def _load_filtered(
    session: AsyncSession, query: NearestQuery, candidates: dict[str, float]
) -> list[ScoredPassage]:
    """The candidates of the query's model, in the caller's organization, with its tags."""
    if not candidates:
        return []
    statement = select(Passage).where(
        Passage.id.in_(list(candidates)), Passage.embedding_model == query.model
    )
    statement = statement.options(defer(Passage.embedding))
    statement = _tag_filtered(statement, query, "sqlite")
    passages = (await session.scalars(statement)).all()
    scored = [ScoredPassage(passage, candidates[passage.id]) for passage in passages]
    return sorted(scored, key=lambda item: (item.distance, item.passage.id))


async def _nearest_exact(session: AsyncSession, query: NearestQuery) -> list[ScoredPassage]:
    """A full scan with exact distances: the fallback that is always right."""
    probe = bindparam("probe", list(query.embedding), type_=EmbeddingVector())
    distance = cosine_distance(Passage.embedding, probe).label("distance")
    dialect = session.get_bind().dialect.name
    statement = _filtered(select(Passage, distance), query, dialect)
    rows = (
        await session.execute(statement.order_by(distance, Passage.id).limit(query.top_k))
    ).all()
    return [ScoredPassage(row[0], float(row[1])) for row in rows]


def _sqlite_timestamp(moment: datetime) -> str:
    """The text form SQLAlchemy stores SQLite timestamps in (UTC, naive)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# --- shared ----------------------------------------------------------------


def _filtered(statement: AnySelect, query: NearestQuery, dialect: str) -> AnySelect:
    # Callers want the text, not the vector back: skip decoding it per row.
    statement = statement.options(defer(Passage.embedding))
    # The dimension is inlined, not bound: a partial index's predicate is only
    # provably satisfied by a literal, and prepared statements turn generic.
    statement = statement.where(
        Passage.embedding_dim == literal_column(str(query.dimension)),
        Passage.embedding.is_not(None),
        Passage.embedding_model == query.model,
        Passage.archive_id.in_(sorted(set(query.archive_ids))),
    )
    if query.start is not None:
        statement = statement.where(Passage.created_at >= query.start)
    if query.end is not None:
        statement = statement.where(Passage.created_at <= query.end)
    return _tag_filtered(statement, query, dialect)


def _tag_filtered(statement: AnySelect, query: NearestQuery, dialect: str) -> AnySelect:
    if not query.tags:
        return statement
    tags = sorted(set(query.tags))
    if query.match_all_tags:
        return statement.where(json_list_has_all(dialect, Passage.tags, tags))
    return statement.where(json_list_has_any(dialect, Passage.tags, tags))


def _checked_dimension(dimension: int) -> int:
    # Dimensions end up in DDL and SQL text; only a positive int may get there.
    if not isinstance(dimension, int) or isinstance(dimension, bool) or dimension <= 0:
        raise ValueError(f"an embedding dimension must be a positive integer, not {dimension!r}")
    return dimension
