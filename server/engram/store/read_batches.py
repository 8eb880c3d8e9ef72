"""Concurrent reads of one kind, coalesced into batches with one batch in flight.

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
  as soon as the one in flight ends.

Under load the batches grow by themselves, so the number of round trips per
second stays about constant while the calls per second rise; a slower
database makes bigger batches rather than a queue of round trips.  The same
key asked for twice in one batch is read once.

Freshness is what a read of its own would give: a read joins only a batch
that has not started, so the statement that answers it begins after the
read was asked for, and sees every change committed before then.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

KeyT = TypeVar("KeyT", bound=Hashable)
ValueT = TypeVar("ValueT")

# Enough to absorb a saturated process's calls in flight; bounded so that one
# statement's parameter list (and its result) stays small.
MOST_PER_BATCH = 256


class ReadBatcher(Generic[KeyT, ValueT]):
    """Runs ``read`` on batches of keys, one batch at a time (see the module docstring).

    ``read`` returns the value of each key it found; a key it leaves out
    reads as None.  An exception from ``read`` is raised to every caller
    whose key was in that batch.
    """

    def __init__(
        self,
        read: Callable[[Sequence[KeyT]], Awaitable[Mapping[KeyT, ValueT]]],
        *,
        most_per_batch: int = MOST_PER_BATCH,
    ) -> None:
        self._read = read
        self._most_per_batch = most_per_batch
        # Whether a batch is in flight (a caller's own read, or the drain task's).
        self._busy = False
        # Keys asked for while a batch was in flight, oldest first, with their waiters.
        self._waiting: dict[KeyT, list[asyncio.Future[ValueT | None]]] = {}
        self._drain_task: asyncio.Task[None] | None = None

    async def get(self, key: KeyT) -> ValueT | None:
        """The value of ``key``, read alone when the batcher is idle, else in the next batch."""
        if not self._busy:
            self._busy = True
            try:
                found = await self._read((key,))
            finally:
                self._batch_ended()
            return found.get(key)
        waiter: asyncio.Future[ValueT | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(waiter)
        return await waiter

    def _batch_ended(self) -> None:
        if self._waiting:
            # The waiters are other callers' tasks, blocked on their futures:
            # the next batch runs in a task of its own, so that this caller's
            # answer does not wait for it.
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        batch: dict[KeyT, list[asyncio.Future[ValueT | None]]] = {}
        try:
            while self._waiting:
                keys = list(itertools.islice(self._waiting, self._most_per_batch))
                batch = {key: self._waiting.pop(key) for key in keys}
                try:
                    found = await self._read(keys)
                except Exception as error:
                    _fail(batch, error)
                else:
                    for key, waiters in batch.items():
                        value = found.get(key)
                        for waiter in waiters:
                            if not waiter.done():  # a caller that went away
                                waiter.set_result(value)
                batch = {}
        finally:
            # Cancelled (the loop is shutting down): nobody will read for the
            # callers still waiting, so they are cancelled too.
            for waiters in itertools.chain(batch.values(), self._waiting.values()):
                for waiter in waiters:
                    waiter.cancel()
            self._waiting = {}
            self._busy = False
            self._drain_task = None


def _fail(batch: Mapping[KeyT, list[asyncio.Future[ValueT | None]]], error: Exception) -> None:
    for waiters in batch.values():
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
