"""ReadBatcher: one batch in flight, later reads in the next; stalls, errors and cancellation."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from engram.store.read_batches import ReadBatcher


class _Database:
    """A stand-in read whose batches finish only when the test lets them."""

    def __init__(self, values: Mapping[str, int]) -> None:
        self.values = dict(values)
        self.batches: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.failures: dict[int, Exception] = {}  # batch index -> what it raises
        self.batch_started = asyncio.Condition()

    async def read(self, keys: Sequence[str]) -> dict[str, int]:
        index = len(self.batches)
        # The values as the batch's statement starts: its snapshot.
        snapshot = {key: self.values[key] for key in keys if key in self.values}
        self.batches.append(list(keys))
        gate = asyncio.Event()
        self.gates.append(gate)
        async with self.batch_started:
            self.batch_started.notify_all()
        await gate.wait()
        if index in self.failures:
            raise self.failures[index]
        return snapshot

    async def started(self, index: int) -> None:
        """Wait until batch ``index`` has started."""
        async with self.batch_started:
            await self.batch_started.wait_for(lambda: len(self.gates) > index)

    async def open(self, index: int) -> None:
        """Let batch ``index`` finish, once it has started."""
        await self.started(index)
        self.gates[index].set()


def _batcher(database: _Database, **options: Any) -> ReadBatcher[str, int]:
    """A batcher whose patience outlasts any test unless the test says otherwise."""
    return ReadBatcher(database.read, **{"patience": 3600.0, **options})


async def _lone_read(batcher: ReadBatcher[str, int], key: str) -> asyncio.Task[int | None]:
    """A read started on an idle batcher, which runs alone and stays in flight."""
    read = asyncio.create_task(batcher.get(key))
    await _settle()
    return read


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_idle_batcher_reads_at_once_and_alone() -> None:
    database = _Database({"a": 1})
    batcher = _batcher(database)

    read = asyncio.create_task(batcher.get("a"))
    await database.open(0)
    missing = asyncio.create_task(batcher.get("zz"))
    await database.open(1)

    assert await read == 1
    assert await missing is None
    assert database.batches == [["a"], ["zz"]]


async def test_reads_asked_during_a_batch_share_the_next_one() -> None:
    database = _Database({"a": 1, "b": 2, "c": 3})
    batcher = _batcher(database)

    first = await _lone_read(batcher, "a")
    later = [asyncio.create_task(batcher.get(key)) for key in ("b", "c", "b", "a")]
    await _settle()
    # The batch in flight never answers a read asked after it started.
    assert database.batches == [["a"]]
    database.values["a"] = 10
    await database.open(0)
    await database.open(1)

    assert await first == 1
    assert [await task for task in later] == [2, 3, 2, 10]
    # One batch for all four, oldest first, each key once.
    assert database.batches == [["a"], ["b", "c", "a"]]


async def test_a_batch_takes_at_most_its_share_and_the_rest_follow() -> None:
    database = _Database({key: index for index, key in enumerate("abcdef")})
    batcher = _batcher(database, most_per_batch=2)

    first = await _lone_read(batcher, "a")
    later = [asyncio.create_task(batcher.get(key)) for key in "bcdef"]
    for index in range(4):
        await database.open(index)

    assert await first == 0
    assert [await task for task in later] == [1, 2, 3, 4, 5]
    assert database.batches == [["a"], ["b", "c"], ["d", "e"], ["f"]]


async def test_a_failed_batch_fails_its_reads_only() -> None:
    database = _Database({"a": 1, "b": 2, "c": 3})
    database.failures[1] = ConnectionError("connection lost")
    batcher = _batcher(database, most_per_batch=2)

    first = await _lone_read(batcher, "a")
    failing = [asyncio.create_task(batcher.get(key)) for key in ("b", "c")]
    surviving = asyncio.create_task(batcher.get("a"))
    for index in range(3):
        await database.open(index)

    assert await first == 1
    for task in failing:
        with pytest.raises(ConnectionError, match="connection lost"):
            await task
    assert await surviving == 1
    # Idle again: the next read runs alone, at once.
    again = asyncio.create_task(batcher.get("c"))
    await database.open(3)
    assert await again == 3
    assert database.batches[-1] == ["c"]


async def test_a_failed_lone_read_is_raised_and_the_waiting_are_still_served() -> None:
    database = _Database({"a": 1, "b": 2})
    database.failures[0] = ConnectionError("gone")
    batcher = _batcher(database)

    first = await _lone_read(batcher, "a")
    waiting = asyncio.create_task(batcher.get("b"))
    await database.open(0)
    await database.open(1)

    with pytest.raises(ConnectionError):
        await first
    assert await waiting == 2


async def test_a_caller_that_goes_away_leaves_the_others_their_answers() -> None:
    database = _Database({"a": 1, "b": 2})
    batcher = _batcher(database)

    first = await _lone_read(batcher, "a")
    leaving = asyncio.create_task(batcher.get("b"))
    staying = asyncio.create_task(batcher.get("b"))
    await _settle()
    leaving.cancel()
    await database.open(0)
    await database.open(1)

    assert await first == 1
    assert await staying == 2
    assert leaving.cancelled()


async def test_a_cancelled_lone_read_still_hands_over_to_the_waiting() -> None:
    database = _Database({"a": 1, "b": 2})
    batcher = _batcher(database)

    first = await _lone_read(batcher, "a")
    waiting = asyncio.create_task(batcher.get("b"))
    await _settle()
    first.cancel()
    await database.open(1)

    assert await waiting == 2
    assert first.cancelled()


async def test_a_cancelled_batch_cancels_its_waiting_reads_and_frees_the_batcher() -> None:
    database = _Database({"a": 1, "b": 2, "c": 3})
    batcher = _batcher(database, most_per_batch=1)

    first = await _lone_read(batcher, "a")
    in_batch = asyncio.create_task(batcher.get("b"))
    queued = asyncio.create_task(batcher.get("c"))
    await database.open(0)
    await first
    await database.started(1)
    (drain,) = batcher._drains
    drain.cancel()
    await _settle()

    assert in_batch.cancelled()
    assert queued.cancelled()
    again = asyncio.create_task(batcher.get("c"))
    await database.open(2)
    assert await again == 3


async def test_reads_waiting_behind_a_stalled_batch_get_a_batch_of_their_own() -> None:
    database = _Database({"a": 1, "b": 2, "c": 3})
    batcher = _batcher(database, patience=0.01)

    stalled = asyncio.create_task(batcher.get("a"))
    await database.started(0)
    waiting = [asyncio.create_task(batcher.get(key)) for key in ("b", "c")]
    # Past the patience a second batch takes the waiting reads.
    await database.open(1)

    assert [await task for task in waiting] == [2, 3]
    assert database.batches == [["a"], ["b", "c"]]
    assert not stalled.done()
    await database.open(0)
    assert await stalled == 1
    assert batcher.idle


async def test_no_more_batches_than_allowed_run_at_once() -> None:
    database = _Database({key: index for index, key in enumerate("abcdefgh")})
    batcher = _batcher(database, patience=0.005, most_in_flight=3)

    reads = [asyncio.create_task(batcher.get("a"))]
    await database.started(0)
    for key in "bcdefgh":
        reads.append(asyncio.create_task(batcher.get(key)))
        await asyncio.sleep(0.02)
    # Three batches stalled; every later read waits for one of them to end.
    assert len(database.batches) == 3
    for index in (1, 2, 0):
        await database.open(index)
    index = 3
    while not all(read.done() for read in reads):
        await database.open(index)
        await _settle()
        index += 1

    assert [await read for read in reads] == list(range(8))
    assert batcher.idle


async def test_a_batch_stuck_past_its_time_limit_fails_its_reads() -> None:
    database = _Database({"a": 1, "b": 2})
    batcher = _batcher(database, time_limit=0.05)

    stuck = asyncio.create_task(batcher.get("a"))
    await database.started(0)
    behind = asyncio.create_task(batcher.get("b"))

    with pytest.raises(TimeoutError):
        await stuck
    with pytest.raises(TimeoutError):
        await behind
    assert batcher.idle
    again = asyncio.create_task(batcher.get("b"))
    await database.open(2)
    assert await again == 2


async def test_batches_for_waiting_callers_run_outside_any_callers_context() -> None:
    request = contextvars.ContextVar("request", default="none")
    seen: list[str] = []
    database = _Database({"a": 1, "b": 2})
    read = database.read

    async def noting(keys: Sequence[str]) -> dict[str, int]:
        seen.append(request.get())
        return await read(keys)

    database.read = noting  # type: ignore[method-assign]
    batcher = _batcher(database)

    async def as_request(name: str, key: str) -> int | None:
        request.set(name)
        return await batcher.get(key)

    first = asyncio.create_task(as_request("first", "a"))
    await database.started(0)
    second = asyncio.create_task(as_request("second", "b"))
    await _settle()
    await database.open(0)
    await database.open(1)

    assert (await first, await second) == (1, 2)
    # The lone read ran in its caller's task; the batch for the waiting one in neither's.
    assert seen == ["first", "none"]


def test_a_batcher_left_busy_by_a_finished_loop_serves_the_next_loop() -> None:
    database_values = {"a": 1}

    async def stuck_forever(keys: Sequence[str]) -> dict[str, int]:
        await asyncio.Event().wait()
        return {}

    batcher: ReadBatcher[str, int] = ReadBatcher(stuck_forever, patience=3600.0)
    abandoned: list[asyncio.Task[int | None]] = []

    async def abandon() -> None:
        # The loop ends with this read in flight: asyncio.run cancels it.
        abandoned.append(asyncio.create_task(batcher.get("a")))
        await asyncio.sleep(0.01)
        assert not batcher.idle

    asyncio.run(abandon())

    async def instant(keys: Sequence[str]) -> dict[str, int]:
        return {key: database_values[key] for key in keys if key in database_values}

    batcher._read = instant

    async def read_again() -> int | None:
        return await asyncio.wait_for(batcher.get("a"), timeout=5)

    assert asyncio.run(read_again()) == 1


async def test_a_read_waiting_behind_full_capacity_is_served_when_a_batch_ends() -> None:
    database = _Database({"a": 1, "b": 2, "c": 3})
    batcher = _batcher(database, most_in_flight=2, patience=0.01)

    lone = asyncio.create_task(batcher.get("a"))
    await database.started(0)
    frozen = asyncio.create_task(batcher.get("b"))
    await database.started(1)  # the second batch, after the patience: capacity is full
    late = asyncio.create_task(batcher.get("c"))
    await asyncio.sleep(0.03)
    assert len(database.batches) == 2
    await database.open(0)
    # The lone read's end frees a place; the frozen batch never ends here.
    await asyncio.wait_for(database.open(2), timeout=2)

    assert await lone == 1
    assert await late == 3
    assert not frozen.done()
    await database.open(1)
    assert await frozen == 2


async def test_idleness_is_reported_even_when_every_waiter_went_away() -> None:
    database = _Database({"a": 1, "b": 2})
    idle: list[bool] = []
    batcher = _batcher(database, on_idle=lambda: idle.append(batcher.idle))

    lone = asyncio.create_task(batcher.get("a"))
    await database.started(0)
    gone = asyncio.create_task(batcher.get("b"))
    await _settle()
    gone.cancel()
    await database.open(0)
    await _settle()

    assert await lone == 1
    # The lone read ended with a waiter left (not idle yet); the drain found
    # nobody to read for and ended idle.
    assert idle == [True]
    assert batcher.idle
