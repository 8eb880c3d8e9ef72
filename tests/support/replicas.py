"""Several real ``engram serve`` processes sharing one PostgreSQL and one Redis.

A durable run must behave as one service across replicas: started on one,
followed, resumed and cancelled through another, and ended properly when its
owner dies.  Only separate processes can show that (each has its own
executor, lease owner and event-log connections), so these helpers start
them the way an operator would, configured by environment variables alone,
and point every one at the same database, Redis and fake LLM provider.

Each replica writes its output to a file rather than a pipe: a busy server
logs a line per lost or failed run, and a pipe nobody reads would fill and
block it.  ``Replica.log_tail`` shows the end of that file when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engram.v1 import (
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    block_pb2,
    message_service_pb2_grpc,
)
from support.postgres import free_port
from support.serve_process import REPO

MODEL = "openai/gpt-replica"
STARTUP_SECONDS = 60.0
# Proxy settings of the developer's shell must not route 127.0.0.1 elsewhere.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")


@dataclass(frozen=True)
class ReplicaConfig:
    """What every replica of a set shares: its database, Redis, provider and settings.

    ``settings`` are extra ``ENGRAM_*`` variables (lease, retention, grace...).
    ``redis_url`` None runs the in-process event log, which only makes sense
    for a single replica.
    """

    database_url: str
    redis_url: str | None
    provider_url: str
    workdir: Path
    settings: Mapping[str, str] = field(default_factory=dict)

    def environment(self, port: int, home: Path) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("ENGRAM_", "LETTA_")) and name not in PROXY_VARIABLES
        }
        env.update(
            {
                "HOME": str(home),
                "ENGRAM_PORT": str(port),
                "ENGRAM_PG_URI": self.database_url,
                "ENGRAM_ENCRYPTION_KEY": "replica-test-key",
                "ENGRAM_DRAIN_DELAY_SECONDS": "0",
                "ENGRAM_HEALTH_CHECK_INTERVAL_SECONDS": "0",
                "OPENAI_API_KEY": "replica-test",
                "OPENAI_BASE_URL": self.provider_url,
                "PYTHONPATH": str(REPO / "server"),
            }
        )
        if self.redis_url is not None:
            env["ENGRAM_REDIS_URL"] = self.redis_url
        env.update(self.settings)
        return env


@dataclass
class Replica:
    """One ``engram serve`` process; restartable on the same port with the same settings."""

    name: str
    port: int
    config: ReplicaConfig
    process: subprocess.Popen[bytes] | None = None
    _starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.config.workdir / f"{self.name}.{self._starts}.log"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"replica {self.name} is not running")
        return self.process.pid

    def start(self) -> None:
        """Launch the process; :meth:`wait_serving` waits until it answers."""
        if self.running:
            raise RuntimeError(f"replica {self.name} is already running")
        self._starts += 1
        home = self.config.workdir / f"{self.name}-home"
        home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "engram.cli", "serve"],
                env=self.config.environment(self.port, home),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def serving(self) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def wait_serving(self, timeout: float = STARTUP_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not self.serving():
            if not self.running:
                raise AssertionError(f"replica {self.name} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"replica {self.name} never served:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the process dies without draining, releasing nothing (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM: the process drains (grace period) and exits; returns without waiting."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        if self.process is None:
            raise RuntimeError(f"replica {self.name} was never started")
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Stop the process however it is: SIGTERM, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, characters: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return "(no log)"


def start_replicas(config: ReplicaConfig, names: Sequence[str]) -> list[Replica]:
    """Start one replica per name, all at once, and wait until every one serves.

    Started one after the other would only be slower: each reads the same
    migrated database and none writes anything the others wait for.
    """
    replicas = [Replica(name, free_port(), config) for name in names]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_serving()
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise
    return replicas


@contextmanager
def running_replicas(config: ReplicaConfig, names: Sequence[str]) -> Iterator[list[Replica]]:
    """:func:`start_replicas`, stopped at the end; a failing body gets each replica's log."""
    replicas = start_replicas(config, names)
    try:
        yield replicas
    except BaseException:
        for replica in replicas:
            print(f"--- log of replica {replica.name} ---\n{replica.log_tail()}", file=sys.stderr)
        raise
    finally:
        for replica in replicas:
            replica.stop()


@dataclass
class ReplicaClient:
    """Async stubs for one replica (the servers run without API keys: the local mode)."""

    channel: grpc.aio.Channel
    agents: Any
    messages: Any
    runs: Any

    @classmethod
    def connect(cls, replica: Replica) -> ReplicaClient:
        channel = grpc.aio.insecure_channel(replica.address)
        return cls(
            channel=channel,
            agents=agent_service_pb2_grpc.AgentServiceStub(channel),
            messages=message_service_pb2_grpc.MessageServiceStub(channel),
            runs=message_service_pb2_grpc.RunServiceStub(channel),
        )

    async def close(self) -> None:
        await self.channel.close()

    async def new_agent(self, display_name: str = "replica-pal", model: str = MODEL) -> str:
        """An agent of ``model`` (a handle on the configured provider); its name, ``agents/...``."""
        agent = await self.agents.CreateAgent(
            agent_service_pb2.CreateAgentRequest(
                agent=agent_pb2.Agent(
                    display_name=display_name,
                    model=model,
                    agent_type=agent_pb2.AGENT_TYPE_NATIVE,
                ),
                memory_blocks=[block_pb2.Block(label="human", value="Name: Ada", limit=200)],
            ),
            timeout=30,
        )
        return str(agent.name)
