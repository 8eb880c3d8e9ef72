"""A real Redis for the tests: the local one when it answers, else one we start.

Parallel test workers (pytest-xdist) each start a private one instead: pub/sub
channels are server-wide, whatever the database number, so a worker listening for
run cancellations on a shared Redis would hear the other worker's.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from support.postgres import free_port

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    host: str
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    workdir: str | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def find_or_start_redis(*, private: bool = False) -> RedisServer:
    """The local Redis on 6379 if it answers, else a new one; always a new one if ``private``."""
    if not private and _answers(DEFAULT_HOST, DEFAULT_PORT):
        return RedisServer(DEFAULT_HOST, DEFAULT_PORT)
    binary = shutil.which("redis-server")
    if binary is None:
        if private:
            raise RuntimeError(
                "parallel test workers each need a Redis of their own and redis-server is not "
                "installed: install it, or run the tests in one process (pytest -n 0)"
            )
        raise RuntimeError("no Redis answers on 127.0.0.1:6379 and redis-server is not installed")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="engram-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            DEFAULT_HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _answers(DEFAULT_HOST, port):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return RedisServer(DEFAULT_HOST, port, process, workdir)
