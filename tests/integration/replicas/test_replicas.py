"""Two ``engram serve`` processes sharing PostgreSQL and Redis behave as one service.

A durable run is started on one replica and then dropped, resumed, retried,
cancelled, crashed and drained through the other; each test checks the
run's stream end to end (every ``seq`` from 1 exactly once, in order, ending
with ``stop_reason`` then ``usage``) and the run's stored outcome, as any
replica reports it.

The provider is the suite's fake, slowed with ``chunk_delay`` so that a turn
is still running when the test acts on it.  Turns stream tokens with
coalescing off, so each provider piece is one event and the counts are known.
Every wait is bounded.  Only the shutdown test leans on speed, with a wide
margin: its quick turn needs about 0.4 s of the 3 s grace.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from engram.rpc.errors import unpack_detail
from engram.v1 import message_service_pb2, run_pb2
from support.api import rich_status
from support.fake_provider import FakeProvider, Reply
from support.replicas import Replica, ReplicaClient

TurnEvent = message_service_pb2.TurnEvent
StreamRunRequest = message_service_pb2.StreamRunRequest

LEASE_SECONDS = 1.5
GRACE_SECONDS = 3.0
MAX_LOG_LENGTH = 100  # the least the server allows: a long run gets trimmed
# Long enough for a slow machine, short enough that a hang fails the test.
STREAM_TIMEOUT = 30.0
FOLLOWERS = 150  # streams at once on one replica, more than redis-py's default pool of 100

pytestmark = pytest.mark.timeout(240)


def chat_requests(provider: FakeProvider) -> int:
    return sum(1 for r in provider.requests if r.path.endswith("/chat/completions"))


async def wait_for_model_calls(provider: FakeProvider, count: int) -> None:
    """Until the provider has been asked for ``count`` completions in all."""
    async with asyncio.timeout(STREAM_TIMEOUT):
        while True:
            if chat_requests(provider) >= count:
                return
            await asyncio.sleep(0.02)


def slow_reply(pieces: int, chunk_delay: float, text: str = "") -> Reply:
    """A streamed answer of ``pieces`` one-character pieces, ``chunk_delay`` apart."""
    body = (text or "abcdefghijklmnopqrstuvwxyz" * (pieces // 26 + 1))[:pieces]
    return Reply(text=body, piece_chars=1, chunk_delay=chunk_delay)


def kind(event: TurnEvent) -> str:
    return str(event.WhichOneof("event"))


@dataclass
class Cluster:
    a: Replica
    b: Replica
    on_a: ReplicaClient
    on_b: ReplicaClient
    provider: FakeProvider


REPLICA_SETTINGS = {
    "ENGRAM_RUN_LEASE_SECONDS": str(LEASE_SECONDS),
    "ENGRAM_RUN_EVENT_MAX_LENGTH": str(MAX_LOG_LENGTH),
    "ENGRAM_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
    "ENGRAM_STREAM_PING_INTERVAL_SECONDS": "0.5",
    "ENGRAM_STREAM_COALESCE_MS": "0",
}


@pytest.fixture
async def cluster(
    replica_pair: list[Replica], provider: FakeProvider, request: pytest.FixtureRequest
) -> AsyncIterator[Cluster]:
    """Both replicas serving (a test that killed one gets it back), and a client for each."""
    for replica in replica_pair:
        if not replica.running:
            replica.start()
    for replica in replica_pair:
        replica.wait_serving()
    a, b = replica_pair
    failures = request.session.testsfailed
    cluster = Cluster(a, b, ReplicaClient.connect(a), ReplicaClient.connect(b), provider)
    try:
        yield cluster
    finally:
        await cluster.on_a.close()
        await cluster.on_b.close()
        if request.session.testsfailed > failures:
            for replica in replica_pair:
                print(f"--- log of replica {replica.name} ---\n{replica.log_tail()}")
    # Every test consumes exactly what it scripted; leftovers would feed the next test.
    assert provider.remaining_replies == 0, "the test left scripted replies unused"


# --- reading streams --------------------------------------------------------------------


async def read(call: Any, *, limit: int | None = None) -> list[TurnEvent]:
    """The stream's events (pings left out) up to ``limit`` of them, or to its end.

    A ping is not part of the run's stream: it must repeat the last seq.
    """
    events: list[TurnEvent] = []
    last_seq: int | None = None
    async with asyncio.timeout(STREAM_TIMEOUT):
        async for event in call:
            if kind(event) == "ping":
                if last_seq is not None:
                    assert event.seq == last_seq
                continue
            events.append(event)
            last_seq = event.seq
            if limit is not None and len(events) >= limit:
                call.cancel()  # drop the stream: the run must go on without it
                break
    return events


async def read_first(call: Any) -> TurnEvent:
    """The first event of a stream that stays open (the caller goes on reading it)."""
    async with asyncio.timeout(STREAM_TIMEOUT):
        async for event in call:
            if kind(event) != "ping":
                return event  # type: ignore[no-any-return]
    raise AssertionError("the stream ended without an event")


async def follow(client: ReplicaClient, run: str, after_seq: int) -> list[TurnEvent]:
    return await read(client.runs.StreamRun(StreamRunRequest(name=run, after_seq=after_seq)))


def assert_complete(events: Sequence[TurnEvent], stop_reason: int) -> None:
    """Seq 1..n, each once, in order, of one run, ending ``stop_reason`` then ``usage``."""
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert len({event.run for event in events}) == 1
    assert [kind(event) for event in events[-2:]] == ["stop_reason", "usage"]
    assert events[-2].stop_reason.stop_reason == stop_reason
    assert not any(kind(event) == "error" for event in events)


def assert_ends(events: Sequence[TurnEvent], after_seq: int, stop_reason: int) -> None:
    """A resumed stream: seq after_seq+1.. without gap, ending ``stop_reason`` then ``usage``."""
    assert [event.seq for event in events] == list(
        range(after_seq + 1, after_seq + 1 + len(events))
    )
    assert [kind(event) for event in events[-2:]] == ["stop_reason", "usage"]
    assert events[-2].stop_reason.stop_reason == stop_reason


def text_of(events: Sequence[TurnEvent]) -> str:
    return "".join(e.assistant_message.text for e in events if kind(e) == "assistant_message")


async def get_run(client: ReplicaClient, run: str) -> run_pb2.Run:
    reply: run_pb2.Run = await client.runs.GetRun(
        message_service_pb2.GetRunRequest(name=run), timeout=10
    )
    return reply


async def wait_until_ended(client: ReplicaClient, run: str) -> run_pb2.Run:
    async with asyncio.timeout(STREAM_TIMEOUT):
        while True:
            found = await get_run(client, run)
            if found.status != run_pb2.RUN_STATUS_RUNNING:
                return found
            await asyncio.sleep(0.1)


def stream_message(client: ReplicaClient, agent: str, **fields: Any) -> Any:
    request = message_service_pb2.StreamMessageRequest(
        agent=agent, text=fields.pop("text", "Tell me a story."), stream_tokens=True, **fields
    )
    return client.messages.StreamMessage(request)


@dataclass
class Refusal:
    code: grpc.StatusCode
    info: error_details_pb2.ErrorInfo
    violations: list[str]  # the PreconditionFailure's violation types, if it has one


async def refusal(call: Any) -> Refusal:
    """How a call (unary or streaming) fails: its code, ErrorInfo and precondition types."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if hasattr(call, "__aiter__"):
            async with asyncio.timeout(STREAM_TIMEOUT):
                async for _ in call:
                    pass
        else:
            await call
    status = rich_status(caught.value)
    info = unpack_detail(status, error_details_pb2.ErrorInfo)
    assert info is not None, caught.value.details()
    failure = unpack_detail(status, error_details_pb2.PreconditionFailure)
    violations = [v.type for v in failure.violations] if failure is not None else []
    return Refusal(caught.value.code(), info, violations)


# --- tests ------------------------------------------------------------------------------


async def test_a_dropped_stream_resumes_on_the_other_replica(cluster: Cluster) -> None:
    agent = await cluster.on_a.new_agent()
    cluster.provider.script(slow_reply(30, 0.05))

    first = await read(stream_message(cluster.on_a, agent), limit=3)
    run = first[-1].run
    rest = await follow(cluster.on_b, run, first[-1].seq)

    events = first + rest
    assert_complete(events, run_pb2.STOP_REASON_END_TURN)
    assert text_of(events) == slow_reply(30, 0).text
    for client in (cluster.on_a, cluster.on_b):
        assert (await get_run(client, run)).status == run_pb2.RUN_STATUS_COMPLETED
        # The log is shared: either replica replays the very bytes the owner wrote.
        replayed = await follow(client, run, 0)
        assert [e.SerializeToString() for e in replayed] == [e.SerializeToString() for e in events]


async def test_a_replica_logs_its_event_loop_but_not_each_provider_request(
    cluster: Cluster,
) -> None:
    agent = await cluster.on_a.new_agent()
    cluster.provider.script(Reply(text="Hello."))
    assert_complete(await read(stream_message(cluster.on_a, agent)), run_pb2.STOP_REASON_END_TURN)
    log = cluster.a.log_path.read_text(errors="replace")
    assert "event loop: uvloop" in log  # ENGRAM_EVENT_LOOP=auto, uvloop installed
    assert "HTTP Request:" not in log  # the SDKs' HTTP client stays quiet below WARNING


async def test_cancel_run_through_the_other_replica(cluster: Cluster) -> None:
    agent = await cluster.on_a.new_agent()
    cluster.provider.script(slow_reply(200, 0.1))

    caller = stream_message(cluster.on_a, agent)
    first = await read_first(caller)
    run = first.run
    follower = asyncio.create_task(follow(cluster.on_b, run, first.seq))
    cancelled = await cluster.on_b.runs.CancelRun(
        message_service_pb2.CancelRunRequest(name=run), timeout=STREAM_TIMEOUT
    )

    assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED
    assert cancelled.stop_reason == run_pb2.STOP_REASON_CANCELLED
    assert cancelled.HasField("cancel_time")
    # The caller's own stream on A, and the follower on B, both end as cancelled.
    assert_complete([first, *await read(caller)], run_pb2.STOP_REASON_CANCELLED)
    assert_ends(await follower, first.seq, run_pb2.STOP_REASON_CANCELLED)
    assert (await get_run(cluster.on_a, run)).status == run_pb2.RUN_STATUS_CANCELLED

    refused = await refusal(
        cluster.on_a.runs.CancelRun(message_service_pb2.CancelRunRequest(name=run), timeout=10)
    )
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.info.reason == "RUN_ALREADY_ENDED"
    assert refused.info.metadata["run"] == run


async def test_cancel_turn_through_the_other_replica(cluster: Cluster) -> None:
    agent = await cluster.on_a.new_agent()
    # The model takes its time before answering at all: the run waits on it.
    cluster.provider.script(Reply(text="too late", delay=60))
    calls = chat_requests(cluster.provider)

    started = await cluster.on_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="Hi.", background=True),
        timeout=10,
    )
    run = started.run.name
    assert started.run.status == run_pb2.RUN_STATUS_RUNNING and started.run.background
    follower = asyncio.create_task(follow(cluster.on_a, run, 0))
    await wait_for_model_calls(cluster.provider, calls + 1)

    cancelled = await cluster.on_b.messages.CancelTurn(
        message_service_pb2.CancelTurnRequest(agent=agent), timeout=STREAM_TIMEOUT
    )

    assert cancelled.name == run
    assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED
    assert_complete(await follower, run_pb2.STOP_REASON_CANCELLED)
    refused = await refusal(
        cluster.on_b.messages.CancelTurn(
            message_service_pb2.CancelTurnRequest(agent=agent), timeout=10
        )
    )
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.violations == ["NO_ACTIVE_RUN"]


async def test_a_killed_owner_ends_its_run_as_owner_lost(cluster: Cluster) -> None:
    agent = await cluster.on_a.new_agent()
    cluster.provider.script(slow_reply(300, 0.1))

    first = await read(stream_message(cluster.on_a, agent), limit=2)
    run = first[-1].run
    follower = asyncio.create_task(follow(cluster.on_b, run, first[-1].seq))
    await asyncio.sleep(0.3)  # let the follower attach before the owner dies (not required)
    cluster.a.kill()

    # The survivor's sweep finds the lapsed lease, fails the run and closes its log.
    rest = await follower
    assert_complete(first + rest, run_pb2.STOP_REASON_OWNER_LOST)
    ended = await get_run(cluster.on_b, run)
    assert ended.status == run_pb2.RUN_STATUS_FAILED
    assert ended.stop_reason == run_pb2.STOP_REASON_OWNER_LOST
    assert ended.error

    # The agent is free again: its next message runs normally on the survivor.
    cluster.provider.script(Reply(text="Back again."))
    again = await cluster.on_b.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="Still there?"),
        timeout=STREAM_TIMEOUT,
    )
    assert again.run.status == run_pb2.RUN_STATUS_COMPLETED
    assert again.messages[-1].text == "Back again."


async def test_a_retried_request_attaches_on_the_other_replica(cluster: Cluster) -> None:
    agent = await cluster.on_a.new_agent()
    calls_before = chat_requests(cluster.provider)
    request_id = str(uuid.uuid4())
    cluster.provider.script(slow_reply(20, 0.05))

    dropped = await read(stream_message(cluster.on_a, agent, request_id=request_id), limit=3)
    # The retry streams the first attempt's run from its first event.
    retried = await read(stream_message(cluster.on_b, agent, request_id=request_id))
    assert_complete(retried, run_pb2.STOP_REASON_END_TURN)
    run = retried[0].run
    assert [e.SerializeToString() for e in dropped] == [e.SerializeToString() for e in retried[:3]]
    # SendMessage with the same id returns that run too, ended.
    sent = await cluster.on_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(
            agent=agent, text="Tell me a story.", request_id=request_id
        ),
        timeout=STREAM_TIMEOUT,
    )
    assert sent.run.name == run and sent.run.status == run_pb2.RUN_STATUS_COMPLETED

    # A background start retried (as a mesh would after UNAVAILABLE) on the other replica.
    second_id = str(uuid.uuid4())
    cluster.provider.script(slow_reply(10, 0.05))
    background = message_service_pb2.SendMessageRequest(
        agent=agent, text="And another.", request_id=second_id, background=True
    )
    started = await cluster.on_b.messages.SendMessage(background, timeout=10)
    retried_send = await cluster.on_a.messages.SendMessage(background, timeout=10)
    assert retried_send.run.name == started.run.name
    await wait_until_ended(cluster.on_a, started.run.name)

    runs = await cluster.on_b.runs.ListRuns(
        message_service_pb2.ListRunsRequest(agent=agent), timeout=10
    )
    assert sorted(r.name for r in runs.runs) == sorted([run, started.run.name])
    assert all(r.status == run_pb2.RUN_STATUS_COMPLETED for r in runs.runs)
    assert chat_requests(cluster.provider) - calls_before == 2  # one model call per run


async def test_simultaneous_attempts_with_one_request_id_share_one_run(cluster: Cluster) -> None:
    agent = await cluster.on_a.new_agent()
    request_id = str(uuid.uuid4())
    cluster.provider.script(slow_reply(10, 0.05))
    request = message_service_pb2.SendMessageRequest(
        agent=agent, text="Hello.", request_id=request_id, background=True
    )

    replies = await asyncio.gather(
        cluster.on_a.messages.SendMessage(request, timeout=10),
        cluster.on_b.messages.SendMessage(request, timeout=10),
        return_exceptions=True,
    )

    runs = await cluster.on_a.runs.ListRuns(
        message_service_pb2.ListRunsRequest(agent=agent), timeout=10
    )
    for run in runs.runs:
        await wait_until_ended(cluster.on_a, run.name)
    assert len(runs.runs) == 1
    answers = [repr(r) if isinstance(r, BaseException) else r.run.name for r in replies]
    assert answers == [runs.runs[0].name] * 2


async def test_one_replica_serves_more_followers_than_its_redis_pool_default(
    cluster: Cluster,
) -> None:
    """Each follower blocks in a Redis read on a connection of its own; 150 must all be served.

    redis-py's asyncio pool holds at most 100 connections unless told
    otherwise and refuses the next one at once; followers have a pool of
    their own, sized by ENGRAM_REDIS_MAX_FOLLOWERS.
    """
    agent = await cluster.on_a.new_agent()
    cluster.provider.script(slow_reply(20, 0.1))
    first = await read(stream_message(cluster.on_a, agent), limit=1)
    run = first[0].run

    followers = await asyncio.gather(
        *(follow(cluster.on_b, run, first[0].seq) for _ in range(FOLLOWERS)),
        return_exceptions=True,
    )

    failed = [f for f in followers if isinstance(f, BaseException)]
    assert not failed, f"{len(failed)} of {FOLLOWERS} followers failed; the first: {failed[0]!r}"
    for events in followers:
        assert isinstance(events, list)
        assert_ends(events, first[0].seq, run_pb2.STOP_REASON_END_TURN)


async def test_positions_no_longer_kept_or_never_sent_are_refused(cluster: Cluster) -> None:
    agent = await cluster.on_a.new_agent()
    pieces = 5 * MAX_LOG_LENGTH  # well past the length the log is trimmed to
    cluster.provider.script(slow_reply(pieces, 0))
    first = await read(stream_message(cluster.on_a, agent), limit=1)
    run = first[0].run
    assert (await wait_until_ended(cluster.on_b, run)).status == run_pb2.RUN_STATUS_COMPLETED

    refused = await refusal(cluster.on_b.runs.StreamRun(StreamRunRequest(name=run)))
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.info.reason == "RUN_EVENTS_EXPIRED"
    first_kept = int(refused.info.metadata["first_seq"])
    assert first_kept > 1

    # From the oldest event kept, the rest of the run replays to its end.
    kept = await follow(cluster.on_a, run, first_kept - 1)
    assert_ends(kept, first_kept - 1, run_pb2.STOP_REASON_END_TURN)
    last = kept[-1].seq
    assert last == pieces + 2  # one event per piece, then stop_reason and usage
    assert await follow(cluster.on_b, run, last) == []  # at the end: closes at once

    refused = await refusal(
        cluster.on_b.runs.StreamRun(StreamRunRequest(name=run, after_seq=last + 1))
    )
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.info.reason == "RUN_POSITION_UNKNOWN"
    assert refused.info.metadata["last_seq"] == str(last)


async def test_shutdown_lets_runs_finish_within_the_grace_or_interrupts_them(
    cluster: Cluster,
) -> None:
    quick_agent = await cluster.on_a.new_agent("quick")
    slow_agent = await cluster.on_a.new_agent("slow")
    # FIFO script: the quick turn starts first. It needs well under the grace
    # after the signal; the slow one far more.
    cluster.provider.script(slow_reply(8, 0.05), slow_reply(400, 0.1))
    quick_call = stream_message(cluster.on_a, quick_agent)
    quick_first = await read_first(quick_call)
    slow_first = (await read(stream_message(cluster.on_a, slow_agent), limit=1))[0]
    followers = [
        asyncio.create_task(follow(cluster.on_b, event.run, event.seq))
        for event in (quick_first, slow_first)
    ]
    cluster.a.terminate()

    assert await asyncio.to_thread(cluster.a.wait_exit, GRACE_SECONDS + 20) == 0
    quick_rest, slow_rest = await asyncio.gather(*followers)
    assert_ends(quick_rest, quick_first.seq, run_pb2.STOP_REASON_END_TURN)
    assert_ends(slow_rest, slow_first.seq, run_pb2.STOP_REASON_INTERRUPTED)
    # A call in flight on the stopping replica got the grace to finish too.
    assert_complete([quick_first, *await read(quick_call)], run_pb2.STOP_REASON_END_TURN)

    quick = await get_run(cluster.on_b, quick_first.run)
    slow = await get_run(cluster.on_b, slow_first.run)
    assert quick.status == run_pb2.RUN_STATUS_COMPLETED
    assert (slow.status, slow.stop_reason) == (
        run_pb2.RUN_STATUS_FAILED,
        run_pb2.STOP_REASON_INTERRUPTED,
    )
