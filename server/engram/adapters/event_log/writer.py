"""Group commit for one run's events: a burst becomes one append, a lone event goes at once.

The agent loop produces events faster than one round trip each (token
deltas), and must never wait on the log to produce the next one.  So
``add`` only queues; one background task writes whatever has queued while
the previous append was in flight.  A lone event therefore goes out at once
(no batching delay), and a burst costs a round trip or two instead of one
per event.
"""

from __future__ import annotations

import asyncio
import contextlib

from engram.adapters.event_log.base import EventLogUnavailableError, LoggedEvent, RunEventLog

# Pauses between attempts of an append the store failed (about 3.5 s in all),
# after which the error stands and the writer stops.
APPEND_RETRY_DELAYS = (0.1, 0.4, 1.0, 2.0)


class EventWriterClosedError(RuntimeError):
    """``add`` after ``close``: a programming error in the caller."""


class RunEventWriter:
    """Appends one run's events in order, batching those that queue up behind a write.

    The caller numbers the events (``next_seq`` tells the next number, or use
    :meth:`add_next`); the writer checks that they follow each other without
    gaps and that nothing follows a final event.  After a failed append
    (including :class:`EventLogConflictError`, meaning another server now owns
    the run) the writer stops: the queued events are dropped and ``add`` and
    ``flush`` raise that error.
    """

    def __init__(self, log: RunEventLog, run_id: str, *, first_seq: int = 1) -> None:
        if first_seq < 1:
            raise ValueError(f"first_seq must be >= 1, got {first_seq}")
        self._log = log
        self._run_id = run_id
        self._next_seq = first_seq
        self._ended = False
        self._closed = False
        self._queued: list[LoggedEvent] = []
        self._added = 0
        self._written = 0
        self._error: Exception | None = None
        self._task: asyncio.Task[None] | None = None
        # Replaced after every append: flush() waits on the current one.
        self._progress = asyncio.Event()

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def next_seq(self) -> int:
        """The seq the next added event must carry."""
        return self._next_seq

    @property
    def error(self) -> Exception | None:
        """The append failure that stopped the writer, if one did."""
        return self._error

    def add(self, event: LoggedEvent) -> None:
        """Queue ``event`` for writing; never blocks.  Needs a running event loop."""
        if self._closed:
            raise EventWriterClosedError(f"run {self._run_id}: the event writer is closed")
        if self._error is not None:
            raise self._error
        if self._ended:
            raise ValueError(f"run {self._run_id}: no event can follow the final one")
        if event.seq != self._next_seq:
            raise ValueError(f"run {self._run_id}: expected seq {self._next_seq}, got {event.seq}")
        self._queued.append(event)
        self._added += 1
        self._next_seq += 1
        self._ended = event.final
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._drain(), name=f"event-writer-{self._run_id}"
            )

    def add_next(self, payload: bytes, *, final: bool = False) -> LoggedEvent:
        """Number ``payload`` with the next seq, queue it, and return the event."""
        event = LoggedEvent(seq=self._next_seq, payload=payload, final=final)
        self.add(event)
        return event

    async def flush(self) -> None:
        """Wait until every event added so far is stored; raise the append error if one failed.

        Cancelling a flush does not cancel the writing itself.
        """
        target = self._added
        while self._written < target:
            if self._error is not None:
                raise self._error
            if self._task is None:
                # Only a cancelled close() stops the task with events unwritten.
                raise EventWriterClosedError(
                    f"run {self._run_id}: the writer was closed before its events were stored"
                )
            await self._progress.wait()
        if self._error is not None and self._written < self._added:
            raise self._error

    async def close(self) -> None:
        """Refuse further adds and wait for the queued events to be written.

        Write failures are not raised here (``flush`` raises them, ``error``
        keeps them), so ``close`` can sit in a ``finally``.  If ``close`` is
        cancelled, the write in flight is cancelled too: no task outlives it.
        """
        self._closed = True
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise

    async def _drain(self) -> None:
        """Append queued events, one batch per round trip, until none are left."""
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    await self._append_retrying(batch)
                except Exception as error:
                    self._error = error
                    self._queued.clear()
                    return
                self._written += len(batch)
                self._wake_flushers()
        finally:
            self._task = None
            self._wake_flushers()

    async def _append_retrying(self, batch: list[LoggedEvent]) -> None:
        """Append ``batch``, retrying a store that failed (a blip must not end a run).

        Safe to repeat: an append that landed before its answer was lost is
        stored again as a no-op.  A conflict is never retried: another server
        owns the run's log now.
        """
        for delay in APPEND_RETRY_DELAYS:
            try:
                await self._log.append(self._run_id, batch)
                return
            except EventLogUnavailableError:
                await asyncio.sleep(delay)
        await self._log.append(self._run_id, batch)

    def _wake_flushers(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()
