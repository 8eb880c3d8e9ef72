"""The in-process run event log: the embedded default when no Redis is configured.

It keeps the Redis backend's contract to the letter (retention since the last
append, maximum length, conflicts, expiry errors, blocking follow) so that the
service behaves the same, and is tested the same, on both.  Only this process
can read it, and it does not survive a restart.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from engram.adapters.event_log.base import (
    EventLogConflictError,
    EventLogUnavailableError,
    EventsExpiredError,
    LogBounds,
    LoggedEvent,
    RunEventLog,
    check_batch,
    check_read,
)

# How many events a reader copies out per pass: the copy is what lets it yield
# while appends trim the list underneath.
READ_BATCH = 256


@dataclass(slots=True)
class _Run:
    """One run's kept events (never empty) and when they were last appended to."""

    events: list[LoggedEvent]
    touched: float

    @property
    def last(self) -> LoggedEvent:
        return self.events[-1]


@dataclass(slots=True)
class _Wakeup:
    """Readers waiting for a run's next append; dropped when the last one leaves."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: int = 0


class MemoryEventLog(RunEventLog):
    """Run event logs in a dict, with asyncio wakeups for live readers."""

    def __init__(
        self,
        *,
        retention_seconds: float,
        max_length: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retention_seconds > 0:
            raise ValueError(f"retention_seconds must be > 0, got {retention_seconds}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self._retention = retention_seconds
        self._max_length = max_length
        self._clock = clock
        self._runs: dict[str, _Run] = {}
        self._wakeups: dict[str, _Wakeup] = {}
        # Expired logs are dropped when touched, and all of them now and then
        # during appends, so runs nobody asks about again do not pile up.
        self._sweep_every = min(retention_seconds, 60.0)
        self._next_sweep = clock() + self._sweep_every
        self._closed = False

    async def append(self, run_id: str, events: Sequence[LoggedEvent]) -> None:
        check_batch(events)
        self._check_open()
        now = self._clock()
        self._sweep(now)
        run = self._live(run_id, now)
        if run is None:
            run = self._runs[run_id] = _Run([], now)
        elif run.last.final or events[0].seq <= run.last.seq:
            if self._already_stored(run, events):
                return
            raise EventLogConflictError(run_id, events[0].seq, run.last.seq, run.last.final)
        run.events.extend(events)
        run.touched = now
        if len(run.events) > self._max_length:
            del run.events[: len(run.events) - self._max_length]
        wakeup = self._wakeups.pop(run_id, None)
        if wakeup is not None:
            wakeup.event.set()

    async def bounds(self, run_id: str) -> LogBounds | None:
        self._check_open()
        run = self._live(run_id, self._clock())
        if run is None:
            return None
        return LogBounds(first=run.events[0].seq, last=run.last.seq, final=run.last.final)

    async def read(
        self, run_id: str, after: int, *, idle_seconds: float
    ) -> AsyncIterator[LoggedEvent | None]:
        check_read(after, idle_seconds)
        self._check_open()
        run = self._live(run_id, self._clock())
        if run is not None and run.last.final and run.last.seq <= after:
            return  # the reader already saw the end: nothing will ever follow
        cursor = after
        while True:
            self._check_open()
            batch = self._events_after(run_id, cursor)
            if batch:
                for event in batch:
                    yield event
                    cursor = event.seq
                    if event.final:
                        return
                continue
            if not await self._wait_for_append(run_id, idle_seconds):
                yield None

    async def close(self) -> None:
        self._closed = True
        self._runs.clear()
        # Wake every waiting reader: each finds the log closed and raises.
        for wakeup in self._wakeups.values():
            wakeup.event.set()
        self._wakeups.clear()

    @staticmethod
    def _already_stored(run: _Run, events: Sequence[LoggedEvent]) -> bool:
        """Whether this exact batch is in the log: a retry of an append that landed."""
        start = bisect.bisect_left(run.events, events[0].seq, key=lambda event: event.seq)
        return run.events[start : start + len(events)] == list(events)

    def _events_after(self, run_id: str, cursor: int) -> list[LoggedEvent]:
        """A copy of the next kept events after ``cursor``; raises if they were trimmed."""
        run = self._live(run_id, self._clock())
        if run is None:
            return []
        events = run.events
        if events[0].seq > cursor + 1:
            raise EventsExpiredError(run_id, cursor, events[0].seq)
        start = bisect.bisect_right(events, cursor, key=lambda event: event.seq)
        return events[start : start + READ_BATCH]

    async def _wait_for_append(self, run_id: str, patience: float) -> bool:
        """Wait for the run's next append; False when ``patience`` seconds passed without one."""
        wakeup = self._wakeups.get(run_id)
        if wakeup is None:
            wakeup = self._wakeups[run_id] = _Wakeup()
        wakeup.waiters += 1
        try:
            async with asyncio.timeout(patience):
                await wakeup.event.wait()
        except TimeoutError:
            return False
        finally:
            wakeup.waiters -= 1
            if wakeup.waiters == 0 and self._wakeups.get(run_id) is wakeup:
                del self._wakeups[run_id]
        return True

    def _live(self, run_id: str, now: float) -> _Run | None:
        """The run's log unless its retention ran out (then it is dropped, as Redis would)."""
        run = self._runs.get(run_id)
        if run is not None and now - run.touched >= self._retention:
            del self._runs[run_id]
            return None
        return run

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_every
        expired = [key for key, run in self._runs.items() if now - run.touched >= self._retention]
        for key in expired:
            del self._runs[key]

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogUnavailableError("the in-process event log is closed")
