"""The run event log's contract, on both backends: in-process and a real Redis.

Every behaviour the service relies on runs twice, once per backend, so the
embedded default cannot drift from what Redis does.  Each test uses its own
run ids (the suite's Redis may be shared); logs expire on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
import redis.asyncio as redis

from engram.adapters.event_log import (
    EventLogBackend,
    EventLogConflictError,
    EventLogUnavailableError,
    EventsExpiredError,
    LogBounds,
    LoggedEvent,
    RedisEventLog,
    RedisRunSignals,
    RunEventLog,
    RunEventWriter,
    open_event_log,
)
from engram.adapters.event_log.factory import redact_url
from support.redis import RedisServer

pytestmark = pytest.mark.timeout(120)

BACKENDS = ("memory", "redis")
# Long enough that no test's log expires under it, short enough to clean up after us.
RETENTION = 120.0
IDLE = 0.05

OpenBackend = Callable[..., Awaitable[EventLogBackend]]


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_url(backend_kind: str, request: pytest.FixtureRequest) -> str | None:
    if backend_kind == "memory":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
async def open_backend(redis_url: str | None) -> AsyncIterator[OpenBackend]:
    """Opens backends of the test's kind (several of them = several processes)."""
    opened: list[EventLogBackend] = []

    async def open_one(
        *, retention_seconds: float = RETENTION, max_length: int = 10_000
    ) -> EventLogBackend:
        backend = await open_event_log(
            redis_url, retention_seconds=retention_seconds, max_length=max_length
        )
        opened.append(backend)
        return backend

    yield open_one
    for backend in opened:
        await backend.close()


@pytest.fixture
async def log(open_backend: OpenBackend) -> RunEventLog:
    return (await open_backend()).log


def new_run_id() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
def run_id() -> str:
    return new_run_id()


def events(first: int, last: int, *, final: bool = False) -> list[LoggedEvent]:
    """Events ``first``..``last`` whose payloads say their seq; the last one final if asked."""
    return [
        LoggedEvent(seq, f"event {seq}".encode(), final=final and seq == last)
        for seq in range(first, last + 1)
    ]


async def read_to_end(
    log: RunEventLog, run_id: str, after: int = 0, *, idle_seconds: float = IDLE
) -> list[LoggedEvent]:
    """Everything the reader yields up to the final event, idle ticks left out."""
    got: list[LoggedEvent] = []
    async with asyncio.timeout(15):
        async for event in log.read(run_id, after, idle_seconds=idle_seconds):
            if event is not None:
                got.append(event)
    return got


async def next_event(reader: AsyncIterator[LoggedEvent | None]) -> LoggedEvent:
    """The reader's next real event, skipping idle ticks."""
    async with asyncio.timeout(15):
        while True:
            event = await anext(reader)
            if event is not None:
                return event


def seqs(logged: Sequence[LoggedEvent]) -> list[int]:
    return [event.seq for event in logged]


# --- Appending and reading -------------------------------------------------------------


async def test_events_come_back_in_order_with_their_payloads(log: RunEventLog, run_id: str) -> None:
    await log.append(run_id, events(1, 3))
    await log.append(run_id, events(4, 4))
    await log.append(run_id, events(5, 9, final=True))
    got = await read_to_end(log, run_id)
    assert got == events(1, 9, final=True)
    assert [event.final for event in got] == [False] * 8 + [True]


async def test_replay_from_a_middle_position(log: RunEventLog, run_id: str) -> None:
    await log.append(run_id, events(1, 20, final=True))
    assert seqs(await read_to_end(log, run_id, after=12)) == list(range(13, 21))
    assert seqs(await read_to_end(log, run_id, after=19)) == [20]


async def test_a_binary_payload_is_kept_byte_for_byte(log: RunEventLog, run_id: str) -> None:
    payload = bytes(range(256)) * 4 + b"\x00\r\n-0"
    await log.append(run_id, [LoggedEvent(1, payload), LoggedEvent(2, b"", final=True)])
    got = await read_to_end(log, run_id)
    assert [event.payload for event in got] == [payload, b""]


async def test_a_reader_follows_the_live_tail(log: RunEventLog, run_id: str) -> None:
    """The reader starts before the log exists, then gets each append as it lands."""
    received: list[LoggedEvent] = []
    got_two = asyncio.Event()

    async def follow() -> None:
        async for event in log.read(run_id, 0, idle_seconds=IDLE):
            if event is not None:
                received.append(event)
                if event.seq == 2:
                    got_two.set()

    async with asyncio.timeout(15):
        reader = asyncio.create_task(follow())
        await asyncio.sleep(3 * IDLE)  # the reader is waiting on a log that does not exist
        assert not reader.done()
        await log.append(run_id, events(1, 2))
        await got_two.wait()
        await log.append(run_id, events(3, 3))
        await log.append(run_id, events(4, 6, final=True))
        await reader
    assert received == events(1, 6, final=True)


async def test_the_reader_stops_after_the_final_event(log: RunEventLog, run_id: str) -> None:
    await log.append(run_id, events(1, 2, final=True))
    reader = log.read(run_id, 0, idle_seconds=IDLE)
    assert seqs([await next_event(reader), await next_event(reader)]) == [1, 2]
    with pytest.raises(StopAsyncIteration):
        async with asyncio.timeout(15):
            await anext(reader)


async def test_resuming_after_the_final_event_ends_at_once(log: RunEventLog, run_id: str) -> None:
    await log.append(run_id, events(1, 3, final=True))
    assert await read_to_end(log, run_id, after=3, idle_seconds=30) == []


async def test_idle_periods_yield_none(log: RunEventLog, run_id: str) -> None:
    async with contextlib.aclosing(log.read(run_id, 0, idle_seconds=IDLE)) as reader:
        async with asyncio.timeout(15):
            assert await anext(reader) is None
            assert await anext(reader) is None
        await log.append(run_id, events(1, 1))
        assert await next_event(reader) == events(1, 1)[0]
        async with asyncio.timeout(15):
            assert await anext(reader) is None


async def test_a_read_position_must_be_sensible(log: RunEventLog, run_id: str) -> None:
    with pytest.raises(ValueError, match="after"):
        await anext(log.read(run_id, -1, idle_seconds=IDLE))
    with pytest.raises(ValueError, match="idle_seconds"):
        await anext(log.read(run_id, 0, idle_seconds=0))


# --- Conflicts and bounds ----------------------------------------------------------------


async def test_an_append_that_does_not_follow_is_refused_whole(
    log: RunEventLog, run_id: str
) -> None:
    await log.append(run_id, events(1, 3))
    for stale in (events(3, 5), [LoggedEvent(2, b"another writer")], events(1, 4)):
        with pytest.raises(EventLogConflictError) as refused:
            await log.append(run_id, stale)
        assert refused.value.stored_last == 3 and not refused.value.ended
    assert await log.bounds(run_id) == LogBounds(first=1, last=3, final=False)
    await log.append(run_id, events(4, 5, final=True))
    assert seqs(await read_to_end(log, run_id)) == [1, 2, 3, 4, 5]


async def test_nothing_is_appended_after_the_final_event(log: RunEventLog, run_id: str) -> None:
    await log.append(run_id, events(1, 2, final=True))
    with pytest.raises(EventLogConflictError) as refused:
        await log.append(run_id, events(3, 4))
    assert refused.value.ended and refused.value.stored_last == 2
    assert await log.bounds(run_id) == LogBounds(first=1, last=2, final=True)
    assert seqs(await read_to_end(log, run_id)) == [1, 2]


async def test_repeating_a_stored_append_is_a_no_op(log: RunEventLog, run_id: str) -> None:
    """A retry whose first attempt landed (its reply lost) must not read as a conflict."""
    await log.append(run_id, events(1, 3))
    await log.append(run_id, events(4, 6, final=True))
    await log.append(run_id, events(4, 6, final=True))
    await log.append(run_id, events(1, 3))
    assert await log.bounds(run_id) == LogBounds(first=1, last=6, final=True)
    different = [LoggedEvent(4, b"another writer"), *events(5, 6, final=True)[1:]]
    with pytest.raises(EventLogConflictError):
        await log.append(run_id, different)
    with pytest.raises(EventLogConflictError):
        await log.append(run_id, events(4, 6))  # the same payloads, but not final
    with pytest.raises(EventLogConflictError):
        await log.append(run_id, events(4, 7, final=True))
    assert seqs(await read_to_end(log, run_id)) == [1, 2, 3, 4, 5, 6]


async def test_a_malformed_batch_is_refused_before_storing(log: RunEventLog, run_id: str) -> None:
    with pytest.raises(ValueError, match="at least one"):
        await log.append(run_id, [])
    with pytest.raises(ValueError, match="increasing"):
        await log.append(run_id, [LoggedEvent(2, b"b"), LoggedEvent(1, b"a")])
    with pytest.raises(ValueError, match="last event"):
        await log.append(run_id, [LoggedEvent(1, b"a", final=True), LoggedEvent(2, b"b")])
    assert await log.bounds(run_id) is None


async def test_bounds(log: RunEventLog, run_id: str) -> None:
    assert await log.bounds(run_id) is None
    await log.append(run_id, events(1, 1))
    assert await log.bounds(run_id) == LogBounds(first=1, last=1, final=False)
    await log.append(run_id, events(2, 7))
    assert await log.bounds(run_id) == LogBounds(first=1, last=7, final=False)
    await log.append(run_id, events(8, 8, final=True))
    assert await log.bounds(run_id) == LogBounds(first=1, last=8, final=True)


async def test_positions_before_the_first_kept_event_are_expired(
    log: RunEventLog, run_id: str
) -> None:
    """A new owner resuming a run continues its numbering; readers from 0 are not refused."""
    await log.append(run_id, events(5, 6, final=True))
    assert await log.bounds(run_id) == LogBounds(first=5, last=6, final=True)
    with pytest.raises(EventsExpiredError):
        await read_to_end(log, run_id)
    assert seqs(await read_to_end(log, run_id, after=4)) == [5, 6]


# --- Retention -----------------------------------------------------------------------------


async def test_trimming_expires_old_positions(open_backend: OpenBackend, run_id: str) -> None:
    log = (await open_backend(max_length=100)).log
    for first in range(1, 1001, 100):
        await log.append(run_id, events(first, first + 99, final=first == 901))
    bounds = await log.bounds(run_id)
    assert bounds is not None
    # Redis trims whole nodes ("about" max_length); the memory log exactly.
    assert 1 < bounds.first <= 901 and bounds.last == 1000 and bounds.final
    with pytest.raises(EventsExpiredError) as expired:
        await read_to_end(log, run_id)
    assert expired.value.first_kept == bounds.first
    with pytest.raises(EventsExpiredError):
        await read_to_end(log, run_id, after=bounds.first - 2)
    got = await read_to_end(log, run_id, after=bounds.first - 1)
    assert seqs(got) == list(range(bounds.first, 1001))


async def test_a_reader_that_falls_behind_trimming_is_told(
    open_backend: OpenBackend, run_id: str
) -> None:
    log = (await open_backend(max_length=100)).log
    await log.append(run_id, events(1, 50))
    reader = log.read(run_id, 0, idle_seconds=IDLE)
    assert (await next_event(reader)).seq == 1
    for first in range(51, 2051, 100):
        await log.append(run_id, events(first, first + 99))
    read_after_trim: list[int] = []
    with pytest.raises(EventsExpiredError) as expired:
        async with asyncio.timeout(15):
            async for event in reader:
                if event is not None:
                    read_after_trim.append(event.seq)
    # Whatever it got before noticing continued without a gap.
    assert read_after_trim == list(range(2, 2 + len(read_after_trim)))
    assert expired.value.after == 1 + len(read_after_trim)
    assert expired.value.first_kept > expired.value.after + 1


async def test_a_log_expires_after_its_retention(open_backend: OpenBackend, run_id: str) -> None:
    log = (await open_backend(retention_seconds=2.0)).log
    await log.append(run_id, events(1, 2))
    await asyncio.sleep(1.2)
    await log.append(run_id, events(3, 3))  # an append restarts the retention
    await asyncio.sleep(1.2)  # past the first append's expiry, not the second's
    assert await log.bounds(run_id) == LogBounds(first=1, last=3, final=False)
    await asyncio.sleep(1.2)
    assert await log.bounds(run_id) is None
    # Gone entirely: a reader finds nothing to replay and waits.
    async with contextlib.aclosing(log.read(run_id, 0, idle_seconds=IDLE)) as reader:
        async with asyncio.timeout(15):
            assert await anext(reader) is None


# --- Readers -------------------------------------------------------------------------------


async def test_a_client_socket_timeout_shorter_than_the_idle_period(
    redis_server: RedisServer, run_id: str
) -> None:
    """redis-py's default clients time reads out; blocking reads must stay under that."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.3)
    log = RedisEventLog(client, retention_seconds=RETENTION, max_length=100)
    try:
        async with contextlib.aclosing(log.read(run_id, 0, idle_seconds=1.0)) as reader:
            async with asyncio.timeout(15):
                assert await anext(reader) is None
            await log.append(run_id, events(1, 1, final=True))
            assert await next_event(reader) == events(1, 1, final=True)[0]
    finally:
        await client.aclose()


async def test_cancelled_readers_leave_the_connections_clean(log: RunEventLog, run_id: str) -> None:
    """A reader cancelled in a blocking read must not leave its reply to someone else.

    After each cancellation the run gets an append, which Redis would send to
    a still-open blocked XREAD; if that connection went back to the pool, the
    next command on it would read that reply instead of its own.
    """
    async with asyncio.timeout(60):
        for cycle in range(1, 51):
            started = asyncio.Event()

            async def follow(started: asyncio.Event = started, after: int = cycle - 1) -> None:
                started.set()
                async for _ in log.read(run_id, after, idle_seconds=30):
                    pass

            reader = asyncio.create_task(follow())
            await started.wait()
            await asyncio.sleep(0.01)  # into the blocking read
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            await log.append(run_id, events(cycle, cycle))
            assert await log.bounds(run_id) == LogBounds(first=1, last=cycle, final=False)
        await log.append(run_id, events(51, 51, final=True))
    assert seqs(await read_to_end(log, run_id)) == list(range(1, 52))


async def test_many_followers_each_get_every_event_once(log: RunEventLog, run_id: str) -> None:
    followers = [asyncio.create_task(read_to_end(log, run_id)) for _ in range(25)]
    await asyncio.sleep(2 * IDLE)
    first = 1
    for size in (1, 3, 10, 1, 50, 7, 100, 28):
        await log.append(run_id, events(first, first + size - 1, final=first + size - 1 == 200))
        first += size
        await asyncio.sleep(0)
    async with asyncio.timeout(30):
        results = await asyncio.gather(*followers)
    for got in results:
        assert got == events(1, 200, final=True)


# --- The writer ----------------------------------------------------------------------------


class CountingLog(RunEventLog):
    """Passes everything on, counting the appends and making each one take a while."""

    def __init__(self, inner: RunEventLog, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.batch_sizes: list[int] = []

    async def append(self, run_id: str, events: Sequence[LoggedEvent]) -> None:
        self.batch_sizes.append(len(events))
        await asyncio.sleep(self.delay)
        await self.inner.append(run_id, events)

    async def bounds(self, run_id: str) -> LogBounds | None:
        return await self.inner.bounds(run_id)

    def read(
        self, run_id: str, after: int, *, idle_seconds: float
    ) -> AsyncIterator[LoggedEvent | None]:
        return self.inner.read(run_id, after, idle_seconds=idle_seconds)

    async def close(self) -> None:
        await self.inner.close()


async def test_the_writer_batches_a_burst(log: RunEventLog, run_id: str) -> None:
    counting = CountingLog(log, delay=0.005)
    writer = RunEventWriter(counting, run_id)
    async with asyncio.timeout(30):
        for seq in range(1, 1001):
            writer.add_next(f"event {seq}".encode(), final=seq == 1000)
            await asyncio.sleep(0)  # a producer that lets the loop run between events
        await writer.flush()
        await writer.close()
    assert sum(counting.batch_sizes) == 1000
    assert counting.batch_sizes[0] == 1  # the first event did not wait for company
    assert len(counting.batch_sizes) < 100
    assert await read_to_end(log, run_id) == events(1, 1000, final=True)


async def test_a_fenced_writer_reports_the_conflict(open_backend: OpenBackend) -> None:
    """Two servers' writers on one run: the one that comes back late is refused."""
    run_id = new_run_id()
    here = await open_backend()
    # The memory backend is one process's own: the other server is itself.
    first_owner = here.log
    second_owner = (await open_backend()).log if here.kind == "redis" else here.log
    stale = RunEventWriter(first_owner, run_id)
    stale.add_next(b"started")
    await stale.flush()
    taken_over = RunEventWriter(second_owner, run_id, first_seq=2)
    taken_over.add_next(b"failed: owner lost", final=True)
    await taken_over.flush()
    stale.add_next(b"late token")
    with pytest.raises(EventLogConflictError):
        await stale.flush()
    await stale.close()
    await taken_over.close()
    assert [event.payload for event in await read_to_end(second_owner, run_id)] == [
        b"started",
        b"failed: owner lost",
    ]


# --- Signals -------------------------------------------------------------------------------


async def test_cancellations_reach_every_process(open_backend: OpenBackend) -> None:
    here = await open_backend()
    # The memory backend is one process's own: its "other process" is itself.
    there = await open_backend() if here.kind == "redis" else here
    heard_here = here.signals.cancellations()
    heard_there = there.signals.cancellations()
    run_ids = [new_run_id() for _ in range(3)]
    async with asyncio.timeout(15):
        for cancelled in run_ids:
            await here.signals.publish_cancel(cancelled)
        assert [await anext(heard_there) for _ in run_ids] == run_ids
        assert [await anext(heard_here) for _ in run_ids] == run_ids


async def test_a_subscription_starts_when_made(open_backend: OpenBackend) -> None:
    backend = await open_backend()
    early = backend.signals.cancellations()
    before, after = new_run_id(), new_run_id()
    async with asyncio.timeout(15):
        await backend.signals.publish_cancel(before)
        assert await anext(early) == before  # delivered everywhere by now
        late = backend.signals.cancellations()
        await backend.signals.publish_cancel(after)
        assert await anext(late) == after
        assert await anext(early) == after


async def test_closing_the_signals_ends_the_subscriptions(open_backend: OpenBackend) -> None:
    backend = await open_backend()
    feed = backend.signals.cancellations()
    await backend.signals.close()
    async with asyncio.timeout(15):
        assert [run_id async for run_id in feed] == []


async def test_the_subscriber_survives_a_killed_connection(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis drops the subscriber's connection; it resubscribes, says so, and hears again."""
    name = f"engram-test-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(redis_server.url, client_name=name)
    admin = redis.Redis.from_url(redis_server.url)
    signals = RedisRunSignals(client, keepalive_seconds=0.2, first_retry_seconds=0.05)
    try:
        async with asyncio.timeout(30):
            await signals.start()
            feed = signals.cancellations()
            killed = 0
            for connection in await admin.client_list():
                if connection.get("name") == name and "P" in connection.get("flags", ""):
                    await admin.client_kill_filter(_id=connection["id"])
                    killed += 1
            assert killed == 1
            # What is published while it reconnects is lost: publish until heard.
            run_id = new_run_id()
            heard = asyncio.create_task(anext(feed))
            while not heard.done():
                await admin.publish("engram:run-cancellations", run_id)
                await asyncio.wait([heard], timeout=0.1)
            assert heard.result() == run_id
    finally:
        await signals.close()
        await client.aclose()
        await admin.aclose()
    assert any("resubscribed" in record.getMessage() for record in caplog.records)


async def test_a_quiet_subscription_is_kept_alive_by_pings(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engram.adapters.event_log")
    client = redis.Redis.from_url(redis_server.url)
    signals = RedisRunSignals(client, keepalive_seconds=0.1)
    try:
        async with asyncio.timeout(15):
            await signals.start()
            feed = signals.cancellations()
            await asyncio.sleep(0.6)  # several keepalive pings and pongs
            run_id = new_run_id()
            await signals.publish_cancel(run_id)
            assert await anext(feed) == run_id
    finally:
        await signals.close()
        await client.aclose()
    assert not [
        record
        for record in caplog.records
        if record.name.startswith("engram") and record.levelno >= logging.WARNING
    ]


# --- Opening -------------------------------------------------------------------------------


async def test_without_a_url_the_log_is_in_process() -> None:
    backend = await open_event_log(None, retention_seconds=60, max_length=100)
    try:
        assert backend.kind == "memory"
    finally:
        await backend.close()


async def test_with_a_url_the_log_is_in_redis(redis_server: RedisServer) -> None:
    backend = await open_event_log(redis_server.url, retention_seconds=60, max_length=100)
    try:
        assert backend.kind == "redis"
    finally:
        await backend.close()


async def test_an_unreachable_redis_is_named_without_its_password() -> None:
    with pytest.raises(EventLogUnavailableError) as failed:
        await open_event_log(
            "redis://engram:hunter2@127.0.0.1:1/0",
            retention_seconds=60,
            max_length=100,
            connect_timeout=2,
        )
    assert "redis://engram:***@127.0.0.1:1/0" in str(failed.value)
    assert "hunter2" not in str(failed.value)


def test_urls_are_redacted() -> None:
    assert redact_url("redis://:s3cret@cache:6380/2?ssl=true") == "redis://:***@cache:6380/2"
    assert redact_url("rediss://cache/0") == "rediss://cache/0"
    assert redact_url("redis://user@cache/0") == "redis://user@cache/0"
