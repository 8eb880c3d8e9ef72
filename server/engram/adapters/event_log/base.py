"""The run event log's contract, shared by the Redis and the in-process backends.

A durable run's events are written once, by the server that owns the run, and
read by any number of clients, on any server, from any position they already
hold: the log is what lets a client that lost its stream resume it without
missing or repeating an event.  The log stores opaque bytes; what an event
means is the service's business.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One event of a run.

    ``seq`` numbers the run's events from 1 without gaps (the writer numbers
    them); readers resume "after" the last seq they saw.  ``final`` marks the
    run's last event: nothing can be appended after it, and readers stop once
    they have yielded it.
    """

    seq: int
    payload: bytes
    final: bool = False


@dataclass(frozen=True, slots=True)
class LogBounds:
    """What a run's log holds now: ``first`` and ``last`` kept seq, and whether it ended."""

    first: int
    last: int
    final: bool


class EventLogConflictError(Exception):
    """An append that does not continue the stored log; nothing of it was stored.

    This fences a second writer: a server whose run was taken over (or closed
    by another server) while it was cut off must not interleave its events
    with the new owner's.
    """

    def __init__(self, run_id: str, attempted: int, stored_last: int, ended: bool) -> None:
        if ended:
            why = f"its log already ended at seq {stored_last}"
        else:
            why = f"seq {attempted} does not follow the stored seq {stored_last}"
        super().__init__(f"run {run_id}: cannot append, {why}")
        self.run_id = run_id
        self.attempted = attempted
        self.stored_last = stored_last
        self.ended = ended


class EventsExpiredError(Exception):
    """The events a reader asked for were trimmed away: it cannot resume from there."""

    def __init__(self, run_id: str, after: int, first_kept: int) -> None:
        super().__init__(
            f"run {run_id}: events after seq {after} are no longer kept "
            f"(the oldest kept is seq {first_kept})"
        )
        self.run_id = run_id
        self.after = after
        self.first_kept = first_kept


class EventLogUnavailableError(Exception):
    """The store behind the log failed (connection lost, timeout) or the log was closed.

    The service maps this to "unavailable" without having to know which
    backend, or which client library, is underneath.
    """

    # Its entry in the published error catalog (engram.v1.ErrorReason).
    reason = "EVENT_LOG_UNAVAILABLE"


class RunEventLog(abc.ABC):
    """A per-run, append-only log of opaque events that readers replay and follow live."""

    @abc.abstractmethod
    async def append(self, run_id: str, events: Sequence[LoggedEvent]) -> None:
        """Store ``events`` atomically and in order, in one round trip.

        Raises :class:`EventLogConflictError`, storing nothing, when
        ``events[0].seq`` is not above the stored last seq or the log already
        ended with a final event, unless exactly these events are stored
        already (a retried append whose first attempt landed: a no-op);
        ``ValueError`` when the batch itself is malformed (see
        :func:`check_batch`).  Each append restarts the log's
        retention and trims it to about its maximum length.
        """

    @abc.abstractmethod
    async def bounds(self, run_id: str) -> LogBounds | None:
        """The kept range of the run's log; None when it has no events (never written, expired)."""

    @abc.abstractmethod
    def read(
        self, run_id: str, after: int, *, idle_seconds: float
    ) -> AsyncIterator[LoggedEvent | None]:
        """Yield the events with seq > ``after`` in order, then follow the live tail.

        Stops after yielding the final event, or at once when the log already
        ended at or before ``after``.  Yields None each time
        ``idle_seconds`` pass with nothing new, so the caller can send a
        keepalive and check on the run.  A log that does not exist yet is
        waited on.  Raises :class:`EventsExpiredError` when seq ``after + 1``
        is older than the oldest kept event, at the start or later, if the
        reader falls behind trimming.  Closing or cancelling the iterator
        releases everything it holds.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the backend's resources; the log is unusable afterwards."""


def check_batch(events: Sequence[LoggedEvent]) -> None:
    """Refuse a batch no backend could store as one ordered, atomic append.

    Both backends validate here, before touching their store, so a bad batch
    fails the same way everywhere and never half-lands in Redis.
    """
    if not events:
        raise ValueError("an append needs at least one event")
    previous = 0
    for index, event in enumerate(events):
        if event.seq <= previous:
            raise ValueError(f"seqs must be >= 1 and increasing; got {event.seq} after {previous}")
        if event.final and index != len(events) - 1:
            raise ValueError("only the last event of a batch can be final")
        previous = event.seq


def check_read(after: int, idle_seconds: float) -> None:
    """Refuse read positions and idle periods that cannot mean anything."""
    if after < 0:
        raise ValueError(f"after must be >= 0, got {after}")
    if not idle_seconds > 0:
        raise ValueError(f"idle_seconds must be > 0, got {idle_seconds}")
