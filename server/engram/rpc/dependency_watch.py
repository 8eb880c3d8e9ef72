"""Health that follows the database: NOT_SERVING while it cannot be reached.

Every Engram service needs the database, so when a periodic probe fails the
overall status and each service's status turn NOT_SERVING, and a load
balancer or mesh stops sending new calls to this replica; when the probe
succeeds again they turn SERVING.  Only the transition is logged, so a long
outage writes two lines, not one per probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from grpc_health.v1 import health_pb2

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DependencyWatch:
    """Probes a dependency every ``interval`` seconds and mirrors it in health statuses."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        set_status: Callable[[int], Awaitable[None]],
        *,
        interval: float,
        timeout: float,
    ) -> None:
        self._probe = probe
        self._set_status = set_status
        self._interval = interval
        self._timeout = timeout
        self._healthy = True
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._healthy

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engram-dependency-watch")

    async def stop(self) -> None:
        """Stop probing; statuses stay as they are (the drain sets its own)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check_once(self) -> bool:
        """Probe now, update the statuses on a change; returns whether the probe passed."""
        try:
            await asyncio.wait_for(self._probe(), timeout=self._timeout)
            healthy, problem = True, ""
        except Exception as error:  # any failure of the probe means "not reachable"
            healthy, problem = False, f"{type(error).__name__}: {error}"
        if healthy != self._healthy:
            self._healthy = healthy
            await self._set_status(SERVING if healthy else NOT_SERVING)
            if healthy:
                logger.info("the database is reachable again: health SERVING")
            else:
                logger.warning("the database is unreachable (%s): health NOT_SERVING", problem)
        return healthy

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_once()
