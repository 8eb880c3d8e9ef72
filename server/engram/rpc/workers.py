"""``engram serve --workers N``: one server process per core, sharing one port.

Python runs one thread of Python code at a time, so a single process tops out
at about one core.  The deliberate answer is gRPC's multi-process model
(``grpc-conventions.md`` §3.9): N independent worker processes each bind the
same address with ``SO_REUSEPORT`` and the kernel spreads *connections* among
them.  Balancing is per connection, so a client holding one HTTP/2
connection stays on one worker; ``max_connection_age`` on the server makes
long-lived clients reconnect and spread over time.

The supervisor here creates no gRPC object at all (gRPC's C core is not
fork-safe once a server or channel exists): it prepares storage once, so
that workers never race to migrate an embedded database, then starts the
workers as fresh interpreters and relays stop signals to them.  If one worker
dies, the supervisor stops the rest and exits non-zero, leaving the restart to
the process manager, which knows the restart policy.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)

# After forwarding SIGTERM, how much longer than the workers' own drain and
# grace the supervisor waits before it kills them.
KILL_MARGIN_SECONDS = 5.0


def worker_command(host: str, port: int, *, insecure: bool) -> list[str]:
    """The command line of one worker: ``engram serve`` bound with SO_REUSEPORT."""
    command = [sys.executable, "-m", "engram.cli", "serve", "--host", host, "--port", str(port)]
    command.append("--reuse-port")
    if insecure:
        command.append("--insecure")
    return command


async def _stop_all(
    workers: Sequence[asyncio.subprocess.Process], signum: int, patience: float
) -> None:
    for worker in workers:
        if worker.returncode is None:
            worker.send_signal(signum)
    waits = [asyncio.create_task(worker.wait()) for worker in workers]
    _, pending = await asyncio.wait(waits, timeout=patience)
    for worker in workers:
        if worker.returncode is None:
            logger.warning("worker %d did not stop in %.1fs; killing it", worker.pid, patience)
            worker.kill()
    if pending:
        await asyncio.wait(pending)


async def supervise(command: list[str], count: int, *, stop_patience: float) -> int:
    """Run ``count`` copies of ``command`` until a stop signal or a worker's death.

    Returns 0 after a requested stop in which every worker exited cleanly,
    1 otherwise.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def request_stop(signum: int) -> None:
        received.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    workers = [await asyncio.create_subprocess_exec(*command) for _ in range(count)]
    logger.info("started %d workers: %s", count, ", ".join(str(w.pid) for w in workers))
    stop_waiter = asyncio.create_task(stop.wait())
    exits = [asyncio.create_task(worker.wait()) for worker in workers]
    done, _ = await asyncio.wait([stop_waiter, *exits], return_when=asyncio.FIRST_COMPLETED)
    requested = stop_waiter in done
    if not requested:
        dead = next(worker for worker in workers if worker.returncode is not None)
        logger.error("worker %d exited with %s; stopping the others", dead.pid, dead.returncode)
    stop_waiter.cancel()
    await _stop_all(workers, received[0] if received else signal.SIGTERM, stop_patience)
    for task in exits:
        await task
    clean = requested and all(worker.returncode == 0 for worker in workers)
    return 0 if clean else 1
