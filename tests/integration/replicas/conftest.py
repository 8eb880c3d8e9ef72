"""Fixtures for the tests that run two replicas.

Each module says how its replicas are configured in ``REPLICA_SETTINGS``
(environment variables); each module gets its own fresh PostgreSQL database,
its own fake provider and its own pair of replicas, shared by its tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.fake_provider import FakeProvider, start_fake_provider
from support.postgres import EmbeddedPostgres, scratch_postgres_database
from support.redis import RedisServer
from support.replicas import Replica, ReplicaConfig, running_replicas


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    fake = start_fake_provider()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def replica_pair(
    postgres_server: EmbeddedPostgres,
    postgres_template: str,
    redis_server: RedisServer,
    provider: FakeProvider,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[list[Replica]]:
    """Replicas "a" and "b" on one database and one Redis, set up by ``REPLICA_SETTINGS``."""
    with scratch_postgres_database(postgres_server, postgres_template) as database_url:
        config = ReplicaConfig(
            database_url=database_url,
            redis_url=redis_server.url,
            provider_url=provider.openai_base_url,
            workdir=tmp_path_factory.mktemp("replicas"),
            settings=dict(request.module.REPLICA_SETTINGS),
        )
        with running_replicas(config, ("a", "b")) as replicas:
            yield replicas
