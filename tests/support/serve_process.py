"""Running ``engram serve`` as a real process, and waiting for it to be healthy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def start_engram(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """Start ``engram serve ARGS`` configured by ``env`` alone (inherited ENGRAM_* dropped)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGRAM_", "LETTA_"))}
    full_env.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "engram.cli", "serve", *args],
        env=full_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def health_status(port: int, service: str = "") -> int | None:
    """The health of ``service`` on a local server, or None when it does not answer."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status)
        except grpc.RpcError:
            return None


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
