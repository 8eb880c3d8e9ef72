"""The `engram serve` process: health, reflection, graceful drain and actionable startup errors."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from support.postgres import EmbeddedPostgres, free_port
from support.serve_process import (
    NOT_SERVING,
    SERVING,
    health_status,
    start_engram,
    wait_for,
)


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    port = free_port()
    home = tmp_path / "engram-home"
    process = start_engram(
        {
            "ENGRAM_SQLITE_PATH": str(home / "engram.db"),
            "ENGRAM_PORT": str(port),
            "ENGRAM_DRAIN_DELAY_SECONDS": "1.0",
            "ENGRAM_SHUTDOWN_GRACE_SECONDS": "2",
        }
    )
    try:
        yield process, port, home
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_serves_health_and_reflection_then_drains(
    sqlite_server: tuple[subprocess.Popen[str], int, Path],
) -> None:
    process, port, home = sqlite_server
    wait_for(lambda: health_status(port) == SERVING)
    # The embedded default created and migrated its database and generated a key file.
    assert (home / "engram.db").exists()
    key_file = home / "encryption.key"
    assert key_file.exists()
    assert key_file.stat().st_mode & 0o777 == 0o600

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
        names = {s.name for s in response.list_services_response.service}
    assert "grpc.health.v1.Health" in names
    engram_services = {
        "engram.v1.AgentService",
        "engram.v1.BlockService",
        "engram.v1.ToolService",
        "engram.v1.AdminService",
    }
    assert engram_services <= names
    # Each service reports its own health, so a probe can watch one of them.
    for service in engram_services:
        assert health_status(port, service) == SERVING
    assert health_status(port, "engram.v1.NoSuchService") is None

    process.send_signal(signal.SIGTERM)
    # During the drain delay the server still answers, but says NOT_SERVING.
    wait_for(lambda: health_status(port) == NOT_SERVING, timeout=1.0)
    assert process.wait(timeout=10) == 0
    _, stderr = process.communicate()
    assert "generated a random key" in stderr
    assert "stopped" in stderr


def test_sigint_also_stops_cleanly(sqlite_server: tuple[subprocess.Popen[str], int, Path]) -> None:
    process, port, _ = sqlite_server
    wait_for(lambda: health_status(port) == SERVING)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0


def run_until_exit(env: dict[str, str]) -> tuple[int, str]:
    process = start_engram({"ENGRAM_PORT": str(free_port()), **env})
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


def test_wrong_password_names_the_variable(postgres_server: EmbeddedPostgres) -> None:
    code, stderr = run_until_exit({"ENGRAM_PG_URI": postgres_server.url(password="wrong")})
    assert code == 2
    assert "rejected the password" in stderr
    assert "ENGRAM_PG_PASSWORD" in stderr
    assert "wrong" not in stderr


def test_refused_connection_names_host_and_port() -> None:
    port = free_port()  # nothing listens there
    code, stderr = run_until_exit({"ENGRAM_PG_URI": f"postgresql://u:p@127.0.0.1:{port}/d"})
    assert code == 2
    assert "connection refused" in stderr
    assert "ENGRAM_PG_HOST" in stderr and "ENGRAM_PG_PORT" in stderr


def test_partial_configuration_names_missing_variables() -> None:
    code, stderr = run_until_exit({"LETTA_PG_HOST": "db", "LETTA_PG_USER": "u"})
    assert code == 2
    assert "ENGRAM_PG_DB" in stderr


def test_behind_head_postgres_names_the_command(postgres_server: EmbeddedPostgres) -> None:
    postgres_server.psql("CREATE DATABASE behind_head")
    code, stderr = run_until_exit({"ENGRAM_PG_URI": postgres_server.url("behind_head")})
    assert code == 2
    assert "engram db upgrade" in stderr


def _system_postgres_without_pgvector() -> str | None:
    """The machine's PostgreSQL 15 (no pgvector), when one answers on 5432."""
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=0.5).close()
    except OSError:
        return None
    return "postgresql://postgres@127.0.0.1:5432/postgres"


def test_missing_pgvector_is_explained() -> None:
    url = _system_postgres_without_pgvector()
    if url is None:
        pytest.skip("no PostgreSQL without pgvector on 127.0.0.1:5432")

    async def has_vector() -> bool:
        import asyncpg

        connection = await asyncpg.connect(url)
        try:
            return bool(
                await connection.fetchval(
                    "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"
                )
            )
        finally:
            await connection.close()

    try:
        if asyncio.run(has_vector()):
            pytest.skip("the PostgreSQL on 5432 has pgvector")
    except Exception as error:
        pytest.skip(f"the PostgreSQL on 5432 is not usable: {error}")
    code, stderr = run_until_exit({"ENGRAM_PG_URI": url})
    assert code == 2
    assert "pgvector" in stderr
    assert "ENGRAM_PG_URI" in stderr


def test_pool_metrics_are_exported_over_otlp(tmp_path: Path) -> None:
    """`engram serve` pushes its pool metrics to the collector OTEL_EXPORTER_OTLP_ENDPOINT names."""
    from concurrent import futures

    from opentelemetry.proto.collector.metrics.v1 import (
        metrics_service_pb2,
        metrics_service_pb2_grpc,
    )

    received: list[str] = []

    class Collector(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
        def Export(self, request, context):  # type: ignore[no-untyped-def]
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    received.extend(metric.name for metric in scope.metrics)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Collector(), collector)
    collector_port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    port = free_port()
    process = start_engram(
        {
            "ENGRAM_SQLITE_PATH": str(tmp_path / "engram.db"),
            "ENGRAM_PORT": str(port),
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
            "ENGRAM_DB_POOL_MONITORING_INTERVAL": "0.5",
            "ENGRAM_DRAIN_DELAY_SECONDS": "0",
        }
    )
    try:
        wait_for(lambda: health_status(port) == SERVING)
        # The pool gauges are exported on every interval, whether or not calls came in.
        wait_for(lambda: "engram.db.pool.connections.available" in received, timeout=20)
        assert "engram.db.pool.connections.checked_out" in received
        assert "engram.db.pool.waiters" in received
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
        collector.stop(0)
