"""Health follows the database: NOT_SERVING while PostgreSQL refuses connections, then back."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import pytest

from support.postgres import EmbeddedPostgres, free_port
from support.serve_process import NOT_SERVING, SERVING, health_status, start_engram, wait_for

SERVICES = ("", "engram.v1.AgentService", "engram.v1.AdminService")
DATABASE = "engram_health_watch"


def all_statuses(port: int) -> set[int | None]:
    return {health_status(port, service) for service in SERVICES}


@pytest.fixture
def server_on_postgres(
    postgres_server: EmbeddedPostgres, postgres_template: str
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    postgres_server.psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    postgres_server.psql(f"CREATE DATABASE {DATABASE} TEMPLATE {postgres_template}")
    port = free_port()
    process = start_engram(
        {
            "ENGRAM_PG_URI": postgres_server.url(DATABASE),
            "ENGRAM_PORT": str(port),
            "ENGRAM_HEALTH_CHECK_INTERVAL_SECONDS": "0.2",
            "ENGRAM_DRAIN_DELAY_SECONDS": "0",
            "ENGRAM_ENCRYPTION_KEY": "test-key",
        }
    )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
        postgres_server.psql(f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS true")
        postgres_server.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def test_health_turns_not_serving_while_the_database_is_unreachable(
    server_on_postgres: tuple[subprocess.Popen[str], int], postgres_server: EmbeddedPostgres
) -> None:
    process, port = server_on_postgres
    wait_for(lambda: all_statuses(port) == {SERVING})

    # Refuse new connections and cut the open ones: to the server, the database is gone.
    postgres_server.psql(f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS false")
    postgres_server.psql(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{DATABASE}'"
    )
    wait_for(lambda: all_statuses(port) == {NOT_SERVING})

    postgres_server.psql(f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS true")
    wait_for(lambda: all_statuses(port) == {SERVING})

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    _, stderr = process.communicate()
    # Each transition is logged once, not once per probe.
    assert stderr.count("the database is unreachable") == 1
    assert stderr.count("the database is reachable again") == 1
