"""Concurrent reads of one kind, coalesced into batches, normally one batch in flight.

A hot read by key (GetAgent; the agent read that opens a turn) costs the
server a database round trip per call, and on a busy process that round
trip, not the query, is most of the call's CPU: the driver's protocol work,
the event loop's wake-ups and, on SQLite, the hand-off to the connection's
thread and back.  :class:`ReadBatcher` shares that cost among the calls that
need it at the same moment:

* a read that arrives while no batch is in flight runs at once, alone, in
  the caller's own task: an idle or lightly loaded server adds nothing;
* a read that arrives while a batch is in flight waits for the next batch,
  which takes every read then waiting (up to ``most_per_batch``) and runs
  as soon as a batch in flight ends.

Under load the batches grow by themselves, so the number of round trips per
second stays about constant while the calls per second rise.  Batches grow
only while few run at once (measured: one batch per pinned connection gave
half the gain of one at a time), so a second batch starts only when every
batch in flight has been running for ``patience`` (25 ms, far above a
healthy round trip) and at most ``most_in_flight`` run at once: while a
connection is stalled (a half-open socket after a failover, say) the other
reads go on in batches of their own, and the stalled batch gives up after
``time_limit`` with :class:`TimeoutError`, which its callers treat like any
failed read.  The same key asked for twice in one batch is read once.

Freshness is what a read of its own would give: a read joins only a batch
that has not started, so the statement that answers it begins after the
read was asked for, and sees every change committed before then.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

KeyT = TypeVar("KeyT", bound=Hashable)
ValueT = TypeVar("ValueT")

# Enough to absorb a saturated process's calls in flight; bounded so that one
# statement's parameter list (and its result) stays small.
MOST_PER_BATCH = 256
# Batches at once when the ones in flight are slow: the pinned connections.
MOST_IN_FLIGHT = 4
PATIENCE_SECONDS = 0.025
TIME_LIMIT_SECONDS = 5.0


class ReadBatcher(Generic[KeyT, ValueT]):
    """Runs ``read`` on batches of keys (see the module docstring).

    ``read`` returns the value of each key it found; a key it leaves out
    reads as None.  An exception from ``read`` is raised to every caller
    whose key was in that batch.  ``on_idle`` is called whenever the last
    batch in flight ends with nobody waiting.  A batcher serves one event
    loop at a time: used from a new loop it forgets the old loop's batches.
    """

    def __init__(
        self,
        read: Callable[[Sequence[KeyT]], Awaitable[Mapping[KeyT, ValueT]]],
        *,
        most_per_batch: int = MOST_PER_BATCH,
        most_in_flight: int = MOST_IN_FLIGHT,
        patience: float = PATIENCE_SECONDS,
        time_limit: float = TIME_LIMIT_SECONDS,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self._read = read
        self._on_idle = on_idle
        self._most_per_batch = most_per_batch
        self._most_in_flight = max(1, most_in_flight)
        self._patience = patience
        self._time_limit = time_limit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._forget()

    def _forget(self) -> None:
        self._in_flight = 0
        # When each batch now in flight started (loop time), by an id of its own.
        self._started: dict[object, float] = {}
        # Keys asked for while a batch was in flight, oldest first, with their waiters.
        self._waiting: dict[KeyT, list[asyncio.Future[ValueT | None]]] = {}
        # The tasks running batches for waiting callers (held: tasks are weakly referenced).
        self._drains: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        """No batch in flight and nobody waiting."""
        return self._in_flight == 0 and not self._waiting

    async def get(self, key: KeyT) -> ValueT | None:
        """The value of ``key``, read alone when no batch is in flight, else in a later batch."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._forget()
        if self._in_flight == 0:
            self._in_flight += 1
            batch_id = object()
            self._started[batch_id] = loop.time()
            try:
                found = await self._timed_read((key,))
            finally:
                self._in_flight -= 1
                self._started.pop(batch_id, None)
                self._batch_ended(loop)
            return found.get(key)
        waiter: asyncio.Future[ValueT | None] = loop.create_future()
        self._waiting.setdefault(key, []).append(waiter)
        self._watch(loop)
        return await waiter

    def _batch_ended(self, loop: asyncio.AbstractEventLoop) -> None:
        """After a caller's own read: hand the waiting reads on, or report idleness."""
        if not self._waiting:
            if self._in_flight == 0 and self._on_idle is not None:
                self._on_idle()
        elif self._in_flight == 0:
            self._start_drain(loop)
        else:
            # The batches in flight will take them, unless they are the slow
            # ones: the patience rule applies as for any waiting read.
            self._watch(loop)

    async def _timed_read(self, keys: Sequence[KeyT]) -> Mapping[KeyT, ValueT]:
        async with asyncio.timeout(self._time_limit):
            return await self._read(keys)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arm the timer that starts another batch if the ones in flight take too long."""
        if self._timer is not None or self._in_flight >= self._most_in_flight:
            return
        delay = max(0.0, self._newest_start() + self._patience - loop.time())
        # Callbacks and drains run in a context of their own, not the caller's
        # that happened to start them (its request id, its bound caller).
        self._timer = loop.call_later(
            delay, self._out_of_patience, loop, context=contextvars.Context()
        )

    def _out_of_patience(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if not self._waiting or self._loop is not loop:
            return
        if loop.time() - self._newest_start() >= self._patience:
            self._start_drain(loop)
        self._watch(loop)

    def _newest_start(self) -> float:
        """When the youngest batch in flight started (minus infinity when none is)."""
        return max(self._started.values(), default=float("-inf"))

    def _start_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._in_flight >= self._most_in_flight:
            return
        self._in_flight += 1
        # Counted as started now, so that the patience rule does not start
        # another drain before this one has had its first turn.
        batch_id = object()
        self._started[batch_id] = loop.time()
        drain = loop.create_task(self._drain(batch_id), context=contextvars.Context())
        self._drains.add(drain)
        drain.add_done_callback(self._drains.discard)

    async def _drain(self, batch_id: object) -> None:
        batch: dict[KeyT, list[asyncio.Future[ValueT | None]]] = {}
        try:
            while self._waiting:
                batch = self._take_batch()
                if not batch:
                    continue
                self._started[batch_id] = asyncio.get_running_loop().time()
                try:
                    found = await self._timed_read(list(batch))
                except Exception as error:
                    for waiters in batch.values():
                        for waiter in waiters:
                            if not waiter.done():
                                waiter.set_exception(error)
                else:
                    for key, waiters in batch.items():
                        value = found.get(key)
                        for waiter in waiters:
                            if not waiter.done():  # a caller that went away
                                waiter.set_result(value)
                batch = {}
        finally:
            self._in_flight -= 1
            self._started.pop(batch_id, None)
            # Cancelled (the loop is shutting down): nobody will read for this
            # batch's callers; the others are left to a batch still running.
            for waiters in batch.values():
                for waiter in waiters:
                    waiter.cancel()
            if self._in_flight == 0:
                for waiters in self._waiting.values():
                    for waiter in waiters:
                        waiter.cancel()
                self._waiting = {}
                if self._on_idle is not None:
                    self._on_idle()

    def _take_batch(self) -> dict[KeyT, list[asyncio.Future[ValueT | None]]]:
        """The oldest waiting keys whose callers still wait, taken out of the queue."""
        keys = list(itertools.islice(self._waiting, self._most_per_batch))
        batch = {key: self._waiting.pop(key) for key in keys}
        return {
            key: waiters
            for key, waiters in batch.items()
            if not all(waiter.done() for waiter in waiters)
        }
