"""``engram serve --workers N``: N processes on one port, stopped and failed together."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support.postgres import free_port
from support.serve_process import SERVING, health_status, start_engram, wait_for

WORKERS = 2


def listening_pids(port: int) -> set[int]:
    """Processes with a listening TCP socket on ``port``."""
    pids: set[int] = set()
    for connection in psutil.net_connections(kind="tcp"):
        if (
            connection.status == psutil.CONN_LISTEN
            and connection.laddr
            and connection.laddr.port == port
            and connection.pid is not None
        ):
            pids.add(connection.pid)
    return pids


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = start_engram(
        {
            "ENGRAM_SQLITE_PATH": str(tmp_path / "engram.db"),
            "ENGRAM_DRAIN_DELAY_SECONDS": "0.2",
            "ENGRAM_SHUTDOWN_GRACE_SECONDS": "1",
        },
        "--port",
        str(port),
        "--workers",
        str(WORKERS),
    )
    try:
        yield process, port
    finally:
        children = (
            psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
        )
        for child in children:
            child.kill()
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def workers_of(process: subprocess.Popen[str]) -> list[psutil.Process]:
    return psutil.Process(process.pid).children()


def test_workers_share_the_port_and_stop_together(
    supervisor: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = supervisor
    wait_for(lambda: health_status(port) == SERVING)
    workers = workers_of(process)
    assert len(workers) == WORKERS
    worker_pids = {worker.pid for worker in workers}
    # Every worker has its own listening socket on the one port (SO_REUSEPORT);
    # the supervisor has none: it never creates a gRPC server.
    wait_for(lambda: listening_pids(port) == worker_pids)

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        for pid in worker_pids
    )


def test_a_dead_worker_stops_the_rest_and_fails(
    supervisor: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = supervisor
    wait_for(lambda: health_status(port) == SERVING)
    first, second = workers_of(process)
    first.kill()
    assert process.wait(timeout=20) == 1
    second.wait(timeout=5)
    _, stderr = process.communicate()
    assert f"worker {first.pid} exited" in stderr


def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    process = start_engram(
        {"ENGRAM_SQLITE_PATH": str(tmp_path / "engram.db")}, "--port", "0", "--workers", "2"
    )
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "fixed port" in stderr


def test_a_single_server_refuses_a_taken_port(tmp_path: Path) -> None:
    port = free_port()
    first = start_engram({"ENGRAM_SQLITE_PATH": str(tmp_path / "a.db")}, "--port", str(port))
    try:
        wait_for(lambda: health_status(port) == SERVING)
        second = start_engram({"ENGRAM_SQLITE_PATH": str(tmp_path / "b.db")}, "--port", str(port))
        second.communicate(timeout=30)
        # Without SO_REUSEPORT the clash fails loudly instead of silently sharing the port.
        assert second.returncode != 0
        assert listening_pids(port) == {first.pid}
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=20)
