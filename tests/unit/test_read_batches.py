"""ReadBatcher: one batch in flight, later reads in the next; errors and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

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


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_idle_batcher_reads_at_once_and_alone() -> None:
    database = _Database({"a": 1})
    batcher = ReadBatcher(database.read)

    read = asyncio.create_task(batcher.get("a"))
    await database.open(0)
    missing = asyncio.create_task(batcher.get("zz"))
    await database.open(1)

    assert await read == 1
    assert await missing is None
    assert database.batches == [["a"], ["zz"]]


async def test_reads_asked_during_a_batch_share_the_next_one() -> None:
    database = _Database({"a": 1, "b": 2, "c": 3})
    batcher = ReadBatcher(database.read)

    first = asyncio.create_task(batcher.get("a"))
    await _settle()
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
    batcher = ReadBatcher(database.read, most_per_batch=2)

    first = asyncio.create_task(batcher.get("a"))
    await _settle()
    later = [asyncio.create_task(batcher.get(key)) for key in "bcdef"]
    for index in range(4):
        await database.open(index)

    assert await first == 0
    assert [await task for task in later] == [1, 2, 3, 4, 5]
    assert database.batches == [["a"], ["b", "c"], ["d", "e"], ["f"]]


async def test_a_failed_batch_fails_its_reads_only() -> None:
    database = _Database({"a": 1, "b": 2, "c": 3})
    database.failures[1] = ConnectionError("connection lost")
    batcher = ReadBatcher(database.read, most_per_batch=2)

    first = asyncio.create_task(batcher.get("a"))
    await _settle()
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
    batcher = ReadBatcher(database.read)

    first = asyncio.create_task(batcher.get("a"))
    await _settle()
    waiting = asyncio.create_task(batcher.get("b"))
    await database.open(0)
    await database.open(1)

    with pytest.raises(ConnectionError):
        await first
    assert await waiting == 2


async def test_a_caller_that_goes_away_leaves_the_others_their_answers() -> None:
    database = _Database({"a": 1, "b": 2})
    batcher = ReadBatcher(database.read)

    first = asyncio.create_task(batcher.get("a"))
    await _settle()
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
    batcher = ReadBatcher(database.read)

    first = asyncio.create_task(batcher.get("a"))
    await _settle()
    waiting = asyncio.create_task(batcher.get("b"))
    await _settle()
    first.cancel()
    await database.open(1)

    assert await waiting == 2
    assert first.cancelled()


async def test_a_cancelled_batch_cancels_its_waiting_reads_and_frees_the_batcher() -> None:
    database = _Database({"a": 1, "b": 2, "c": 3})
    batcher = ReadBatcher(database.read, most_per_batch=1)

    first = asyncio.create_task(batcher.get("a"))
    await _settle()
    in_batch = asyncio.create_task(batcher.get("b"))
    queued = asyncio.create_task(batcher.get("c"))
    await database.open(0)
    await first
    await database.started(1)
    drain = batcher._drain_task
    assert drain is not None
    drain.cancel()
    await _settle()

    assert in_batch.cancelled()
    assert queued.cancelled()
    again = asyncio.create_task(batcher.get("c"))
    await database.open(2)
    assert await again == 3
