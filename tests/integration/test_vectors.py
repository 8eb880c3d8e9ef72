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
