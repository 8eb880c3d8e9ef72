"""The embedding column and a nearest-neighbour query, on both engines."""

from __future__ import annotations

import math
import random

from sqlalchemy import select

from engram.store.database import Database
from engram.store.models import Archive, Organization, Passage
from engram.store.vectors import distance_to


def cosine_distance(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return 1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def test_nearest_neighbours_match_brute_force(database: Database) -> None:
    rng = random.Random(7)
    async with database.transaction(None, all_organizations=True) as session:
        org = Organization(name="vectors")
        session.add(org)
    vectors = {f"p{i}": [rng.uniform(-1, 1) for _ in range(16)] for i in range(200)}
    async with database.transaction(org.id) as session:
        archive = Archive(name="memories")
        session.add(archive)
        await session.flush()
        for text, vector in vectors.items():
            session.add(
                Passage(archive_id=archive.id, text=text, embedding=vector, embedding_dim=16)
            )
    query = [rng.uniform(-1, 1) for _ in range(16)]
    expected = sorted(vectors, key=lambda t: cosine_distance(vectors[t], query))[:5]
    async with database.read(org.id) as session:
        distance = distance_to(Passage.embedding, query)
        rows = (
            await session.execute(
                select(Passage.text, distance.label("d")).order_by(distance).limit(5)
            )
        ).all()
    assert [text for text, _ in rows] == expected
    for text, d in rows:
        assert abs(d - cosine_distance(vectors[text], query)) < 1e-4


async def test_embeddings_round_trip_and_dimensions_coexist(database: Database) -> None:
    async with database.transaction(None, all_organizations=True) as session:
        org = Organization(name="dims")
        session.add(org)
    async with database.transaction(org.id) as session:
        archive = Archive(name="mixed")
        session.add(archive)
        await session.flush()
        session.add(
            Passage(
                archive_id=archive.id, text="small", embedding=[0.5, -1.0, 2.0], embedding_dim=3
            )
        )
        session.add(
            Passage(archive_id=archive.id, text="large", embedding=[0.25] * 384, embedding_dim=384)
        )
        session.add(Passage(archive_id=archive.id, text="none"))
    async with database.read(org.id) as session:
        by_text = {p.text: p for p in (await session.scalars(select(Passage))).all()}
    assert by_text["small"].embedding == [0.5, -1.0, 2.0]
    assert by_text["large"].embedding == [0.25] * 384
    assert by_text["none"].embedding is None


async def test_timestamps_are_aware_utc_on_both_engines(database: Database) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    async with database.transaction(None, all_organizations=True) as session:
        org = Organization(name="clock")
        session.add(org)
    before = datetime.now(UTC)
    async with database.transaction(org.id) as session:
        archive = Archive(name="t")
        session.add(archive)
    async with database.read(org.id) as session:
        loaded = (await session.scalars(select(Archive))).one()
    assert loaded.created_at.tzinfo is not None
    assert loaded.created_at.utcoffset() == timedelta(0)
    assert abs((loaded.created_at - before).total_seconds()) < 5
    # A non-UTC aware value is stored as the same instant.
    plus_two = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    async with database.transaction(org.id) as session:
        row = await session.get(Archive, archive.id)
        assert row is not None
        row.created_at = plus_two
    async with database.read(org.id) as session:
        row = await session.get(Archive, archive.id)
        assert row is not None
        assert row.created_at == plus_two
        assert row.created_at.hour == 10
