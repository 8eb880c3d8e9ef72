"""Contract smoke test: a generic gRPC client drives a real `engram serve` through reflection.

`buf curl` knows nothing of Engram: it learns the schema from the server's
reflection service and speaks JSON, so this checks what a third-party client
sees on the wire: the proto3 JSON names of the fields, resource names, and
errors whose google.rpc.Status carries an ErrorInfo with a catalog reason.
The server runs in local mode (SQLite, loopback, no API keys), so no key is sent.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.postgres import free_port

REPO = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 60.0
STOP_SECONDS = 20.0
AGENT_NAME = re.compile(
    r"^agents/(agent-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})$"
)
NOT_FOUND_EXIT = grpc.StatusCode.NOT_FOUND.value[0] << 3  # buf curl exits with code << 3


def find_buf() -> str | None:
    """`buf` on PATH, or the one installed next to this interpreter (the venv's bin)."""
    found = shutil.which("buf")
    if found:
        return found
    beside = Path(sys.executable).parent / "buf"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


@dataclass
class EngramProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then the exit code once the server has drained and exited."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_SECONDS)

    def group_is_empty(self) -> bool:
        """Whether nothing is left of the process group the server was started in."""
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return True
        return False


def is_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def wait_until_serving(server: EngramProcess) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"engram serve exited with {server.process.returncode}:\n{server.log()}"
            )
        if is_serving(server.port):
            return
        time.sleep(0.1)
    raise AssertionError(f"engram serve was not SERVING within {STARTUP_SECONDS}s:\n{server.log()}")


@pytest.fixture
def engram(tmp_path: Path) -> Iterator[EngramProcess]:
    """`engram serve` on SQLite in a temporary home, on a free loopback port, in local mode."""
    port = free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ENGRAM_", "LETTA_", "OTEL_"))
    }
    env.update(
        {
            "HOME": str(tmp_path / "home"),
            "ENGRAM_SQLITE_PATH": str(tmp_path / "engram" / "engram.db"),
            "ENGRAM_HOST": "127.0.0.1",
            "ENGRAM_PORT": str(port),
            "ENGRAM_DRAIN_DELAY_SECONDS": "0.2",
            "ENGRAM_SHUTDOWN_GRACE_SECONDS": "2",
        }
    )
    log_path = tmp_path / "engram.log"
    log: IO[bytes] = log_path.open("wb")  # a file, not a pipe nobody drains
    process = subprocess.Popen(
        [sys.executable, "-m", "engram.cli", "serve"],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the test can check it is empty
    )
    server = EngramProcess(process, port, log_path)
    try:
        wait_until_serving(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if not server.group_is_empty():
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@dataclass
class CurlResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error_json(self) -> Any:
        """buf curl prints a failed call's status as JSON (on stderr; stdout stays empty)."""
        text = self.stderr.strip() or self.stdout.strip()
        return json.loads(text[text.index("{") :])


def buf_curl(buf: str, url: str, *flags: str, data: dict[str, Any] | None = None) -> CurlResult:
    """``buf curl`` over plain-text HTTP/2 with the gRPC protocol (reflection uses it too)."""
    command = [buf, "curl", "--protocol", "grpc", "--http2-prior-knowledge", *flags]
    if data is not None:
        command += ["--data", json.dumps(data)]
    command.append(url)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return CurlResult(result.returncode, result.stdout, result.stderr)


def decode_any_value(value: str) -> bytes:
    """The bytes of a ``details[].value`` (base64, padding optional, either alphabet)."""
    return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_")


@pytest.fixture
def buf() -> str:
    found = find_buf()
    if found is None:
        pytest.skip("the buf CLI is not installed (pip install buf-bin, part of the dev extra)")
    return found


def test_buf_curl_creates_gets_and_lists_agents_and_sees_rich_errors(
    buf: str, engram: EngramProcess
) -> None:
    base_url = f"http://127.0.0.1:{engram.port}"

    def curl(method: str, data: dict[str, Any]) -> CurlResult:
        return buf_curl(buf, f"{base_url}/{method}", data=data)

    # Reflection works with gRPC (grpcio does not speak Connect, buf's default protocol).
    services = buf_curl(buf, base_url, "--list-services")
    assert services.returncode == 0, services.stderr
    assert {
        "engram.v1.AgentService",
        "engram.v1.BlockService",
        "engram.v1.ToolService",
    } <= set(services.stdout.split())

    created = curl(
        "engram.v1.AgentService/CreateAgent",
        {
            "agent": {"displayName": "buf smoke agent", "tags": ["smoke"]},
            "memoryBlocks": [{"label": "human", "value": "talks through buf curl"}],
            "includeBaseTools": False,
        },
    )
    assert created.returncode == 0, created.stderr
    agent = created.json()
    match = AGENT_NAME.fullmatch(agent["name"])
    assert match, agent
    assert agent["id"] == match.group(1)
    assert agent["displayName"] == "buf smoke agent"
    assert agent["agentType"] == "AGENT_TYPE_NATIVE"
    assert agent["tags"] == ["smoke"]
    assert len(agent["blocks"]) == 1 and agent["blocks"][0].startswith("blocks/block-")
    assert agent["etag"] and agent["createTime"] and agent["updateTime"]

    fetched = curl("engram.v1.AgentService/GetAgent", {"name": agent["name"]})
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.json() == agent

    listing = curl("engram.v1.AgentService/ListAgents", {"pageSize": 10})
    assert listing.returncode == 0, listing.stderr
    assert [item["name"] for item in listing.json()["agents"]] == [agent["name"]]
    assert listing.json()["agents"][0] == agent

    missing_id = f"agent-{uuid.uuid4()}"
    failed = curl("engram.v1.AgentService/GetAgent", {"name": f"agents/{missing_id}"})
    assert failed.returncode == NOT_FOUND_EXIT, (failed.returncode, failed.stderr)
    status = failed.error_json()
    assert status["code"] == "not_found"
    assert missing_id in status["message"]
    infos = [detail for detail in status["details"] if detail["type"] == "google.rpc.ErrorInfo"]
    assert len(infos) == 1, status
    info = error_details_pb2.ErrorInfo.FromString(decode_any_value(infos[0]["value"]))
    assert info.reason == "NOT_FOUND"
    assert info.domain == "engram.dev"
    assert dict(info.metadata) == {"resource": "agent", "id": missing_id}

    assert engram.stop() == 0, engram.log()
    assert engram.group_is_empty()
    assert "stopped" in engram.log()
