"""The event writer's group commit, ordering and failure rules, over the in-process log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from engram.adapters.event_log import (
    EventLogConflictError,
    EventWriterClosedError,
    LogBounds,
    LoggedEvent,
    MemoryEventLog,
    RunEventLog,
    RunEventWriter,
)

pytestmark = pytest.mark.timeout(30)

RUN = "run-1"


class GatedLog(RunEventLog):
    """An in-process log whose appends wait for the test to open a gate, recording batches."""

    def __init__(self) -> None:
        self.inner = MemoryEventLog(retention_seconds=60, max_length=10_000)
        self.gate = asyncio.Event()
        self.gate.set()
        # Appends starting at one of these seqs wait for their own gate instead.
        self.gates: dict[int, asyncio.Event] = {}
        self.batches: list[list[int]] = []
        self.entered = asyncio.Event()

    async def append(self, run_id: str, events: Sequence[LoggedEvent]) -> None:
        self.batches.append([event.seq for event in events])
        self.entered.set()
        await self.gates.get(events[0].seq, self.gate).wait()
        await self.inner.append(run_id, events)

    async def bounds(self, run_id: str) -> LogBounds | None:
        return await self.inner.bounds(run_id)

    def read(
        self, run_id: str, after: int, *, idle_seconds: float
    ) -> AsyncIterator[LoggedEvent | None]:
        return self.inner.read(run_id, after, idle_seconds=idle_seconds)

    async def close(self) -> None:
        await self.inner.close()


def writer_tasks() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("event-writer-")]


async def test_events_queued_behind_a_write_go_out_together() -> None:
    log = GatedLog()
    log.gate.clear()
    writer = RunEventWriter(log, RUN)
    writer.add_next(b"1")
    await log.entered.wait()  # the lone first event went out at once
    for seq in range(2, 11):
        writer.add_next(str(seq).encode())
    log.gate.set()
    async with asyncio.timeout(5):
        await writer.flush()
    assert log.batches == [[1], list(range(2, 11))]
    assert await log.bounds(RUN) == LogBounds(first=1, last=10, final=False)
    await writer.close()
    assert writer_tasks() == []


async def test_events_added_without_yielding_are_one_append() -> None:
    log = GatedLog()
    writer = RunEventWriter(log, RUN)
    for seq in range(1, 101):
        writer.add_next(str(seq).encode(), final=seq == 100)
    await writer.flush()
    assert log.batches == [list(range(1, 101))]
    await writer.close()


async def test_the_writer_numbers_events_without_gaps() -> None:
    writer = RunEventWriter(MemoryEventLog(retention_seconds=60, max_length=100), RUN, first_seq=7)
    assert writer.next_seq == 7
    assert writer.add_next(b"a") == LoggedEvent(7, b"a")
    with pytest.raises(ValueError, match="expected seq 8"):
        writer.add(LoggedEvent(9, b"gap"))
    writer.add(LoggedEvent(8, b"b", final=True))
    with pytest.raises(ValueError, match="final"):
        writer.add_next(b"after the end")
    await writer.close()
    with pytest.raises(ValueError, match="first_seq"):
        RunEventWriter(MemoryEventLog(retention_seconds=60, max_length=100), RUN, first_seq=0)


async def test_flush_with_nothing_added_returns_at_once() -> None:
    writer = RunEventWriter(MemoryEventLog(retention_seconds=60, max_length=100), RUN)
    async with asyncio.timeout(5):
        await writer.flush()
        await writer.close()


async def test_a_failed_append_stops_the_writer() -> None:
    log = MemoryEventLog(retention_seconds=60, max_length=100)
    await log.append(RUN, [LoggedEvent(1, b"someone else's")])
    writer = RunEventWriter(log, RUN)
    writer.add_next(b"mine")
    with pytest.raises(EventLogConflictError):
        await writer.flush()
    assert isinstance(writer.error, EventLogConflictError)
    with pytest.raises(EventLogConflictError):
        writer.add_next(b"more")
    with pytest.raises(EventLogConflictError):
        await writer.flush()
    await writer.close()  # does not raise: it may sit in a finally
    assert writer_tasks() == []


async def test_close_writes_what_was_queued_then_refuses_more() -> None:
    log = GatedLog()
    log.gate.clear()
    writer = RunEventWriter(log, RUN)
    writer.add_next(b"1")
    writer.add_next(b"2", final=True)
    closing = asyncio.create_task(writer.close())
    await log.entered.wait()
    assert not closing.done()
    log.gate.set()
    async with asyncio.timeout(5):
        await closing
    assert await log.bounds(RUN) == LogBounds(first=1, last=2, final=True)
    with pytest.raises(EventWriterClosedError):
        writer.add_next(b"3")
    assert writer_tasks() == []


async def test_a_cancelled_close_leaves_no_task_behind() -> None:
    log = GatedLog()
    log.gate.clear()  # the write never finishes on its own
    writer = RunEventWriter(log, RUN)
    writer.add_next(b"1")
    closing = asyncio.create_task(writer.close())
    await log.entered.wait()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert writer_tasks() == []
    with pytest.raises(EventWriterClosedError):
        await writer.flush()


async def test_a_cancelled_flush_does_not_cancel_the_write() -> None:
    log = GatedLog()
    log.gate.clear()
    writer = RunEventWriter(log, RUN)
    writer.add_next(b"1")
    flushing = asyncio.create_task(writer.flush())
    await log.entered.wait()
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    log.gate.set()
    async with asyncio.timeout(5):
        await writer.flush()
    assert await log.bounds(RUN) == LogBounds(first=1, last=1, final=False)
    await writer.close()


async def test_a_flush_waits_only_for_what_was_added_before_it() -> None:
    log = GatedLog()
    log.gate.clear()
    log.gates[2] = asyncio.Event()  # the second append hangs until the end
    writer = RunEventWriter(log, RUN)
    writer.add_next(b"1")
    await log.entered.wait()
    flushing = asyncio.create_task(writer.flush())
    await asyncio.sleep(0)  # the flush is waiting for event 1
    writer.add_next(b"2")
    log.gate.set()
    async with asyncio.timeout(5):
        await flushing
    assert await log.bounds(RUN) == LogBounds(first=1, last=1, final=False)
    assert log.batches == [[1], [2]]
    log.gates[2].set()
    async with asyncio.timeout(5):
        await writer.close()
    assert await log.bounds(RUN) == LogBounds(first=1, last=2, final=False)
