"""Nearest-neighbour search over passages with per-dimension indexes, on both engines."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select, text

from engram.store.database import Database
from engram.store.models import Archive, Organization, Passage
from engram.store.passage_search import (
    NearestQuery,
    VectorIndexes,
    nearest_passages,
    pg_vector_index,
    sqlite_vector_table,
)

MODEL = "local/test-model"


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return 1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def unit(*values: float) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


async def make_org(database: Database, name: str = "vectors") -> str:
    async with database.transaction(None, all_organizations=True) as session:
        org = Organization(name=name)
        session.add(org)
    return org.id


async def make_archive(database: Database, org_id: str, name: str = "memories") -> str:
    async with database.transaction(org_id) as session:
        archive = Archive(name=name)
        session.add(archive)
    return archive.id


async def add_passages(
    database: Database,
    org_id: str,
    archive_id: str,
    rows: Sequence[tuple[str, list[float]]],
    *,
    model: str = MODEL,
    tags: Sequence[str] = (),
    created_at: datetime | None = None,
) -> list[str]:
    async with database.transaction(org_id) as session:
        passages = [
            Passage(
                archive_id=archive_id,
                text=label,
                embedding=vector,
                embedding_dim=len(vector),
                embedding_model=model,
                tags=list(tags),
                **({"created_at": created_at} if created_at else {}),
            )
            for label, vector in rows
        ]
        session.add_all(passages)
    return [p.id for p in passages]


async def search(database: Database, org_id: str, query: NearestQuery) -> list[tuple[str, float]]:
    async with database.read(org_id) as session:
        found = await nearest_passages(session, query)
    return [(item.passage.text, item.distance) for item in found]


async def test_results_match_exact_search(database: Database) -> None:
    rng = random.Random(11)
    org = await make_org(database)
    archive = await make_archive(database, org)
    vectors = {f"p{i}": [rng.gauss(0, 1) for _ in range(32)] for i in range(600)}
    await VectorIndexes(database).ensure(32)
    await add_passages(database, org, archive, list(vectors.items()))
    hits = 0
    for _ in range(20):
        probe = [rng.gauss(0, 1) for _ in range(32)]
        expected = sorted(vectors, key=lambda label: cosine(vectors[label], probe))[:10]
        found = await search(database, org, NearestQuery(probe, MODEL, [archive], top_k=10))
        assert len(found) == 10
        assert [d for _, d in found] == sorted(d for _, d in found)
        for label, distance in found:
            assert distance == pytest.approx(cosine(vectors[label], probe), abs=1e-4)
        hits += len({label for label, _ in found} & set(expected))
    assert hits / 200 >= 0.95


async def test_filters_by_archive_model_and_time(database: Database) -> None:
    org = await make_org(database)
    first = await make_archive(database, org, "first")
    second = await make_archive(database, org, "second")
    await VectorIndexes(database).ensure(3)
    old = datetime(2026, 1, 1, tzinfo=UTC)
    new = datetime(2026, 6, 1, tzinfo=UTC)
    await add_passages(database, org, first, [("first-old", unit(1, 0, 0))], created_at=old)
    await add_passages(database, org, first, [("first-new", unit(1, 0.1, 0))], created_at=new)
    await add_passages(database, org, second, [("second", unit(1, 0.2, 0))], created_at=new)
    await add_passages(database, org, first, [("other-model", unit(1, 0, 0))], model="other/m")
    probe = unit(1, 0, 0)

    in_first = await search(database, org, NearestQuery(probe, MODEL, [first], top_k=10))
    assert [label for label, _ in in_first] == ["first-old", "first-new"]

    both = await search(database, org, NearestQuery(probe, MODEL, [first, second], top_k=10))
    assert [label for label, _ in both] == ["first-old", "first-new", "second"]

    recent = NearestQuery(probe, MODEL, [first, second], top_k=10, start=old + timedelta(days=1))
    assert [label for label, _ in await search(database, org, recent)] == ["first-new", "second"]

    early = NearestQuery(probe, MODEL, [first, second], top_k=10, end=old)
    assert [label for label, _ in await search(database, org, early)] == ["first-old"]

    other = await search(database, org, NearestQuery(probe, "other/m", [first], top_k=10))
    assert [label for label, _ in other] == ["other-model"]


async def test_tags_match_any_or_all_even_when_the_tagged_are_far(database: Database) -> None:
    rng = random.Random(5)
    org = await make_org(database)
    archive = await make_archive(database, org)
    await VectorIndexes(database).ensure(8)
    probe = unit(1, 0, 0, 0, 0, 0, 0, 0)
    # Many close, untagged passages crowd the neighbourhood of the probe...
    close = [(f"close{i}", unit(1, *(rng.uniform(0, 0.05) for _ in range(7)))) for i in range(60)]
    await add_passages(database, org, archive, close)
    # ...and the tagged ones are far away: a search must still find them.
    await add_passages(
        database, org, archive, [("red", unit(0, 1, 0, 0, 0, 0, 0, 0))], tags=["red"]
    )
    await add_passages(
        database, org, archive, [("red-blue", unit(0, 0, 1, 0, 0, 0, 0, 0))], tags=["red", "blue"]
    )
    await add_passages(
        database, org, archive, [("blue", unit(0, 0, 0, 1, 0, 0, 0, 0))], tags=["blue"]
    )

    any_red = NearestQuery(probe, MODEL, [archive], top_k=5, tags=["red"])
    assert sorted(label for label, _ in await search(database, org, any_red)) == [
        "red",
        "red-blue",
    ]
    any_of = NearestQuery(probe, MODEL, [archive], top_k=5, tags=["red", "blue"])
    assert len(await search(database, org, any_of)) == 3
    all_of = NearestQuery(
        probe, MODEL, [archive], top_k=5, tags=["red", "blue"], match_all_tags=True
    )
    assert [label for label, _ in await search(database, org, all_of)] == ["red-blue"]


async def test_dimensions_coexist_and_each_has_its_index(database: Database) -> None:
    org = await make_org(database)
    archive = await make_archive(database, org)
    indexes = VectorIndexes(database)
    for dimension in (3, 384):
        await indexes.ensure(dimension)
    await add_passages(database, org, archive, [("small", unit(1, 2, 3))])
    await add_passages(database, org, archive, [("large", [0.5] * 384)])
    small = await search(database, org, NearestQuery(unit(1, 2, 3), MODEL, [archive], top_k=5))
    large = await search(database, org, NearestQuery([0.5] * 384, MODEL, [archive], top_k=5))
    assert [label for label, _ in small] == ["small"]
    assert [label for label, _ in large] == ["large"]
    assert small[0][1] == pytest.approx(0, abs=1e-5)
    assert await _index_names(database) >= {_index_name(database, 3), _index_name(database, 384)}


async def test_rows_stored_before_the_index_exists_are_found(database: Database) -> None:
    org = await make_org(database)
    archive = await make_archive(database, org)
    await add_passages(database, org, archive, [("early", unit(0, 1, 0, 0))])
    # Searching a width with no index yet is exact and already right.
    probe = unit(0, 1, 0, 0)
    assert [
        label for label, _ in await search(database, org, NearestQuery(probe, MODEL, [archive], 3))
    ] == ["early"]
    await VectorIndexes(database).ensure(4)
    await add_passages(database, org, archive, [("late", unit(0, 1, 0.1, 0))])
    found = await search(database, org, NearestQuery(probe, MODEL, [archive], 3))
    assert [label for label, _ in found] == ["early", "late"]


async def test_deleted_passages_and_archives_leave_the_index(database: Database) -> None:
    org = await make_org(database)
    keep = await make_archive(database, org, "keep")
    drop = await make_archive(database, org, "drop")
    await VectorIndexes(database).ensure(3)
    [gone] = await add_passages(database, org, keep, [("gone", unit(1, 0, 0))])
    await add_passages(database, org, keep, [("kept", unit(1, 1, 0))])
    await add_passages(database, org, drop, [("cascaded", unit(1, 0, 0))])
    async with database.transaction(org) as session:
        await session.execute(delete(Passage).where(Passage.id == gone))
        archive = await session.get(Archive, drop)
        assert archive is not None
        await session.delete(archive)
    found = await search(database, org, NearestQuery(unit(1, 0, 0), MODEL, [keep, drop], 10))
    assert [label for label, _ in found] == ["kept"]
    if database.choice.is_sqlite:
        async with database.read(org) as session:
            count = await session.scalar(text(f"SELECT count(*) FROM {sqlite_vector_table(3)}"))
        assert count == 1


async def test_edited_embeddings_are_searched_by_their_new_value(database: Database) -> None:
    org = await make_org(database)
    archive = await make_archive(database, org)
    await VectorIndexes(database).ensure(3)
    [moved] = await add_passages(database, org, archive, [("moved", unit(1, 0, 0))])
    await add_passages(database, org, archive, [("still", unit(0.9, 0.1, 0))])
    async with database.transaction(org) as session:
        passage = await session.get(Passage, moved)
        assert passage is not None
        passage.embedding = unit(0, 0, 1)
    found = await search(database, org, NearestQuery(unit(1, 0, 0), MODEL, [archive], 1))
    assert [label for label, _ in found] == ["still"]
    found = await search(database, org, NearestQuery(unit(0, 0, 1), MODEL, [archive], 1))
    assert [label for label, _ in found] == ["moved"]


async def test_another_organizations_archive_finds_nothing(database: Database) -> None:
    org_a = await make_org(database, "a")
    org_b = await make_org(database, "b")
    archive_a = await make_archive(database, org_a)
    await VectorIndexes(database).ensure(3)
    await add_passages(database, org_a, archive_a, [("secret", unit(1, 0, 0))])
    assert await search(database, org_b, NearestQuery(unit(1, 0, 0), MODEL, [archive_a], 5)) == []
    found = await search(database, org_a, NearestQuery(unit(1, 0, 0), MODEL, [archive_a], 5))
    assert [label for label, _ in found] == ["secret"]


@pytest.mark.parametrize("dimension", [2500, 4100])
async def test_wide_embeddings(database: Database, dimension: int) -> None:
    """Past 2,000 dimensions PostgreSQL indexes halfvec; past 4,000 it scans exactly."""
    rng = random.Random(dimension)
    org = await make_org(database)
    archive = await make_archive(database, org)
    await VectorIndexes(database).ensure(dimension)
    vectors = {f"w{i}": [rng.gauss(0, 1) for _ in range(dimension)] for i in range(20)}
    await add_passages(database, org, archive, list(vectors.items()))
    probe = vectors["w7"]
    found = await search(database, org, NearestQuery(probe, MODEL, [archive], 3))
    assert found[0][0] == "w7"
    assert found[0][1] == pytest.approx(0, abs=1e-3)
    expected = sorted(vectors, key=lambda label: cosine(vectors[label], probe))[:3]
    assert [label for label, _ in found] == expected


async def test_postgres_queries_use_the_partial_hnsw_index(
    database: Database, engine_kind: str
) -> None:
    if engine_kind != "postgresql":
        pytest.skip("the HNSW index is PostgreSQL's")
    org = await make_org(database)
    archive = await make_archive(database, org)
    await VectorIndexes(database).ensure(3)
    await add_passages(database, org, archive, [(f"p{i}", unit(1, i, 0)) for i in range(50)])
    probe = unit(1, 0, 0)
    async with database.engine.connect() as connection:
        await connection.execute(text("SET enable_seqscan = off"))
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(bind=connection) as session:
            found = await nearest_passages(session, NearestQuery(probe, MODEL, [archive], 5))
            assert [item.passage.text for item in found] == ["p0", "p1", "p2", "p3", "p4"]
            plan = "\n".join(
                str(row[0])
                for row in await connection.execute(
                    text(
                        "EXPLAIN SELECT id FROM passages WHERE embedding_dim = 3 "
                        "ORDER BY embedding::vector(3) <=> CAST(:probe AS vector(3)) LIMIT 5"
                    ),
                    {"probe": "[1,0,0]"},
                )
            )
    assert pg_vector_index(3) in plan


async def test_ensure_is_idempotent_across_processes(database: Database) -> None:
    """A second process (a fresh VectorIndexes) finds the index and keeps its rows."""
    org = await make_org(database)
    archive = await make_archive(database, org)
    await VectorIndexes(database).ensure(3)
    await add_passages(database, org, archive, [("one", unit(1, 0, 0))])
    await VectorIndexes(database).ensure(3)
    found = await search(database, org, NearestQuery(unit(1, 0, 0), MODEL, [archive], 5))
    assert [label for label, _ in found] == ["one"]


async def test_bad_dimensions_are_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        await VectorIndexes(database).ensure(0)


def _index_name(database: Database, dimension: int) -> str:
    if database.choice.is_sqlite:
        return sqlite_vector_table(dimension)
    return pg_vector_index(dimension)


async def _index_names(database: Database) -> set[str]:
    async with database.read(None, all_organizations=True) as session:
        if database.choice.is_sqlite:
            rows = await session.scalars(
                text("SELECT name FROM sqlite_master WHERE type = 'table'")
            )
        else:
            rows = await session.scalars(select(text("indexname")).select_from(text("pg_indexes")))
        return set(rows.all())


async def test_vector_indexes_are_not_schema_drift(database: Database) -> None:
    from engram.store.migrations import model_drift

    indexes = VectorIndexes(database)
    for dimension in (3, 384, 2500):
        await indexes.ensure(dimension)
    assert await model_drift(database.engine) == []
