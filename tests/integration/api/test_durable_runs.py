"""Durable runs through the stubs, in one server: resume, idempotent starts, cancel, drain.

Runs outlive their streams: a dropped stream is resumed with StreamRun from
the last seq, a retried start attaches to the first run, cancellation works
by run or by agent, and shutdown ends what cannot finish.  Both storage
engines, with the in-process event log and with Redis; several servers
sharing Redis are covered by replicas/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from sqlalchemy import select

from engram.adapters.event_log import writer as writer_module
from engram.adapters.event_log.base import EventLogUnavailableError, LoggedEvent
from engram.adapters.event_log.factory import EventLogBackend, open_event_log
from engram.config.settings import Settings
from engram.rpc.errors import reason_of, unpack_detail
from engram.services import messages as messages_module
from engram.services import run_executor as run_executor_module
from engram.services.runtime.turn import StepStarted
from engram.store import clock as clock_module
from engram.store.database import Database
from engram.store.models import Run
from engram.store.types import utc_now
from engram.v1 import (
    agent_pb2,
    agent_service_pb2,
    message_pb2,
    message_service_pb2,
    run_pb2,
    tool_rule_pb2,
)
from support.api import ApiHarness, Client, rich_status, running_api
from support.fake_provider import FakeProvider, Reply, ToolCall
from support.llm import MODEL, fake_registry
from support.redis import RedisServer

TurnEvent = message_service_pb2.TurnEvent
LOG_KINDS = ("memory", "redis")


@pytest.fixture(params=LOG_KINDS)
def log_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _backend(kind: str, redis_server: RedisServer, max_length: int) -> EventLogBackend:
    url = redis_server.url if kind == "redis" else None
    return await open_event_log(url, retention_seconds=600, max_length=max_length)


async def _harness(
    settings: Settings,
    database: Database,
    fake_provider: FakeProvider,
    backend: EventLogBackend,
) -> AsyncIterator[ApiHarness]:
    registry = fake_registry(fake_provider)
    configured = settings.model_copy(update={"stream_ping_interval_seconds": 30.0})
    try:
        async with running_api(configured, database, registry, run_events=backend) as harness:
            yield harness
    finally:
        await registry.close()


@pytest.fixture
async def chat(
    settings: Settings,
    database: Database,
    fake_provider: FakeProvider,
    redis_server: RedisServer,
    log_kind: str,
) -> AsyncIterator[ApiHarness]:
    backend = await _backend(log_kind, redis_server, max_length=10_000)
    async for harness in _harness(settings, database, fake_provider, backend):
        yield harness


async def new_agent(client: Client, rules: Sequence[dict[str, object]] = ()) -> str:
    agent = await client.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(
                display_name="pal",
                model=MODEL,
                agent_type=agent_pb2.AGENT_TYPE_NATIVE,
                tool_rules=[json_format.ParseDict(r, tool_rule_pb2.ToolRule()) for r in rules],
            )
        )
    )
    return str(agent.name)


async def stream(client: Client, agent: str, text: str, **options: object) -> list[TurnEvent]:
    call = client.messages.StreamMessage(
        message_service_pb2.StreamMessageRequest(agent=agent, text=text, **options)
    )
    return [event async for event in call]


async def resume(client: Client, run: str, after: int) -> list[TurnEvent]:
    call = client.runs.StreamRun(message_service_pb2.StreamRunRequest(name=run, after_seq=after))
    return [event async for event in call]


async def get_run(client: Client, run: str) -> run_pb2.Run:
    return await client.runs.GetRun(message_service_pb2.GetRunRequest(name=run))


def kinds(events: Sequence[TurnEvent]) -> list[str]:
    return [str(event.WhichOneof("event")) for event in events]


async def test_a_dropped_stream_resumes_from_its_last_seq_without_gap_or_repeat(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(
        Reply(tool_calls=[ToolCall("conversation_search", {"query": "tea"}, id="c1")]),
        Reply(text="Nothing about tea yet.", delay=0.5),
    )
    call = chat.org_a.messages.StreamMessage(
        message_service_pb2.StreamMessageRequest(agent=agent, text="Any tea?")
    )
    seen = []
    async for event in call:
        seen.append(event)
        if event.WhichOneof("event") == "tool_return":
            break
    call.cancel()  # the client goes away while the model writes its answer

    rest = await resume(chat.org_a, seen[-1].run, seen[-1].seq)

    events = [*seen, *rest]
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert kinds(events) == [
        "tool_call",
        "tool_return",
        "assistant_message",
        "stop_reason",
        "usage",
    ]
    run = await get_run(chat.org_a, seen[0].run)
    assert run.status == run_pb2.RUN_STATUS_COMPLETED and not run.background


async def test_an_ended_run_replays_the_same_events_and_closes(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Hello."))
    events = await stream(chat.org_a, agent, "Hi")
    run = events[0].run

    assert await resume(chat.org_a, run, 0) == events
    assert await resume(chat.org_a, run, 1) == events[1:]
    assert await resume(chat.org_a, run, events[-1].seq) == []


async def test_positions_beyond_the_last_event_are_unknown(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Hello."))
    events = await stream(chat.org_a, agent, "Hi")
    last = events[-1].seq

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await resume(chat.org_a, events[0].run, last + 1)

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rich_status(refused.value)
    assert reason_of(status) == "RUN_POSITION_UNKNOWN"
    info = unpack_detail(status, error_details_pb2.ErrorInfo)
    assert info is not None and info.metadata["last_seq"] == str(last)
    with pytest.raises(grpc.aio.AioRpcError) as negative:
        await resume(chat.org_a, events[0].run, -1)
    assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_trimmed_positions_are_expired(
    settings: Settings, database: Database, fake_provider: FakeProvider
) -> None:
    # The in-process log, keeping two events per run. (Redis trims approximately, a
    # whole node of about 100 entries at a time; replicas/test_replicas.py trims a
    # long run there.)
    backend = await open_event_log(None, retention_seconds=600, max_length=2)
    async for chat in _harness(settings, database, fake_provider, backend):
        agent = await new_agent(chat.org_a)
        fake_provider.script(
            Reply(tool_calls=[ToolCall("conversation_search", {"query": "tea"}, id="c1")]),
            Reply(text="Nothing."),
        )
        events = await stream(chat.org_a, agent, "Any tea?")
        assert len(events) == 5

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await resume(chat.org_a, events[0].run, 0)

        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        status = rich_status(refused.value)
        assert reason_of(status) == "RUN_EVENTS_EXPIRED"
        info = unpack_detail(status, error_details_pb2.ErrorInfo)
        assert info is not None and int(info.metadata["first_seq"]) > 1
        # What is still kept replays.
        first = int(info.metadata["first_seq"])
        assert await resume(chat.org_a, events[0].run, first - 1) == events[first - 1 :]


async def test_a_retried_stream_with_the_same_request_id_attaches_to_the_first_run(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Once."))
    request_id = str(uuid.uuid4())

    first = await stream(chat.org_a, agent, "Hi", request_id=request_id)
    again = await stream(chat.org_a, agent, "Hi", request_id=request_id)

    assert again == first
    assert len(fake_provider.requests) == 1
    runs = await chat.org_a.runs.ListRuns(message_service_pb2.ListRunsRequest(agent=agent))
    assert [r.name for r in runs.runs] == [first[0].run]


async def test_concurrent_sends_with_one_request_id_start_one_run(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Once.", delay=0.3))
    request = message_service_pb2.SendMessageRequest(
        agent=agent, text="Hi", request_id=str(uuid.uuid4())
    )

    responses = await asyncio.gather(
        chat.org_a.messages.SendMessage(request), chat.org_a.messages.SendMessage(request)
    )

    assert responses[0] == responses[1]
    assert responses[0].run.status == run_pb2.RUN_STATUS_COMPLETED
    assert len(fake_provider.requests) == 1


async def test_request_ids_are_checked(chat: ApiHarness, fake_provider: FakeProvider) -> None:
    agent, other = await new_agent(chat.org_a), await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Once."))
    request_id = str(uuid.uuid4())
    await stream(chat.org_a, agent, "Hi", request_id=request_id)

    for target, request_id_used in ((agent, "not-a-uuid"), (other, request_id)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream(chat.org_a, target, "Hi", request_id=request_id_used)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = unpack_detail(rich_status(refused.value), error_details_pb2.BadRequest)
        assert bad is not None and [v.field for v in bad.field_violations] == ["request_id"]


async def test_a_background_send_returns_at_once_and_the_run_can_be_followed(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Later.", delay=0.5))

    response = await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="Hi", background=True)
    )

    assert response.run.status == run_pb2.RUN_STATUS_RUNNING and response.run.background
    assert [m.text for m in response.messages] == ["Hi"]
    events = await resume(chat.org_a, response.run.name, 0)
    assert kinds(events) == ["assistant_message", "stop_reason", "usage"]
    assert (await get_run(chat.org_a, response.run.name)).status == run_pb2.RUN_STATUS_COMPLETED


async def test_cancelling_a_run_that_waits_for_the_model_stops_it_at_once(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Too late.", delay=30))
    started = await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="Hi", background=True)
    )
    run_name = started.run.name

    cancelled = await chat.org_a.runs.CancelRun(
        message_service_pb2.CancelRunRequest(name=run_name), timeout=10
    )

    assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED
    assert cancelled.stop_reason == run_pb2.STOP_REASON_CANCELLED
    assert cancelled.HasField("cancel_time")
    events = await resume(chat.org_a, run_name, 0)
    assert kinds(events) == ["stop_reason", "usage"]
    assert events[0].stop_reason.stop_reason == run_pb2.STOP_REASON_CANCELLED
    steps = await chat.org_a.runs.ListRunSteps(
        message_service_pb2.ListRunStepsRequest(parent=run_name)
    )
    assert len(steps.steps) == 1  # the interrupted call, recorded as cancelled
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await chat.org_a.runs.CancelRun(message_service_pb2.CancelRunRequest(name=run_name))
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(rich_status(again.value)) == "RUN_ALREADY_ENDED"
    # The agent is free for the next message.
    fake_provider.script(Reply(text="Back."))
    assert kinds(await stream(chat.org_a, agent, "Again"))[-2:] == ["stop_reason", "usage"]


async def test_a_follower_sees_the_cancellation_end_its_stream(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Too late.", delay=30))
    call = chat.org_a.messages.StreamMessage(
        message_service_pb2.StreamMessageRequest(agent=agent, text="Hi")
    )
    following = asyncio.create_task(_collect(call))
    await _wait_for_running(chat.org_a, agent)

    cancelled = await chat.org_a.messages.CancelTurn(
        message_service_pb2.CancelTurnRequest(agent=agent), timeout=10
    )

    events = await asyncio.wait_for(following, 10)
    assert kinds(events) == ["stop_reason", "usage"]
    assert events[0].run == cancelled.name
    assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED


async def test_cancelling_a_run_paused_for_approval_refuses_its_call(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent, paused = await paused_for_approval(chat, fake_provider)
    assert kinds(paused)[-3:] == ["approval_request", "stop_reason", "usage"]

    cancelled = await chat.org_a.messages.CancelTurn(
        message_service_pb2.CancelTurnRequest(agent=agent)
    )

    assert cancelled.name == paused[0].run
    assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED
    history = await chat.org_a.messages.ListMessages(
        message_service_pb2.ListMessagesRequest(parent=agent)
    )
    refusal = history.messages[-1]
    assert refusal.role == message_pb2.MESSAGE_ROLE_TOOL and refusal.tool_call_id == "p1"
    assert "cancelled" in refusal.text
    # Nothing is pending any more: neither a review nor a second cancel.
    with pytest.raises(grpc.aio.AioRpcError) as review:
        await _collect(
            chat.org_a.messages.SubmitApproval(
                message_service_pb2.SubmitApprovalRequest(agent=agent, call_id="p1", approve=True)
            )
        )
    assert review.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as nothing:
        await chat.org_a.messages.CancelTurn(message_service_pb2.CancelTurnRequest(agent=agent))
    failure = unpack_detail(rich_status(nothing.value), error_details_pb2.PreconditionFailure)
    assert failure is not None and [v.type for v in failure.violations] == ["NO_ACTIVE_RUN"]
    # The next turn sends the provider a history in which every call has its result.
    fake_provider.script(Reply(text="Fine."))
    assert kinds(await stream(chat.org_a, agent, "Never mind"))[-2:] == ["stop_reason", "usage"]


async def test_runs_are_listed_by_status_and_time(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="One."))
    done = (await stream(chat.org_a, agent, "Hi"))[0].run
    fake_provider.script(Reply(text="Never.", delay=30))
    started = await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="Hi", background=True)
    )
    running = started.run.name

    async def listed(**filters: object) -> list[str]:
        response = await chat.org_a.runs.ListRuns(
            message_service_pb2.ListRunsRequest(agent=agent, **filters)
        )
        return [run.name for run in response.runs]

    assert await listed(statuses=[run_pb2.RUN_STATUS_RUNNING]) == [running]
    assert await listed(statuses=[run_pb2.RUN_STATUS_COMPLETED]) == [done]
    both = [run_pb2.RUN_STATUS_RUNNING, run_pb2.RUN_STATUS_COMPLETED]
    assert await listed(statuses=both) == [done, running]
    cut = started.run.create_time
    assert await listed(start_time=cut) == [running]
    assert await listed(end_time=cut) == [done]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await listed(statuses=[42])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await chat.org_a.runs.CancelRun(message_service_pb2.CancelRunRequest(name=running))


async def test_shutdown_interrupts_runs_that_outlast_the_grace(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Too late.", delay=30))
    started = await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="Hi", background=True)
    )

    await chat.services.drain_runs(0.2)

    run = await get_run(chat.org_a, started.run.name)
    assert (run.status, run.stop_reason) == (
        run_pb2.RUN_STATUS_FAILED,
        run_pb2.STOP_REASON_INTERRUPTED,
    )
    events = await resume(chat.org_a, started.run.name, 0)
    assert kinds(events) == ["stop_reason", "usage"]
    assert events[0].stop_reason.stop_reason == run_pb2.STOP_REASON_INTERRUPTED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream(chat.org_a, agent, "Hi again")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(rich_status(refused.value)) == "SHUTTING_DOWN"


async def test_a_run_whose_server_died_is_ended_and_its_stream_closed(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Hello."))
    events = await stream(chat.org_a, agent, "Hi")
    agent_id = agent.removeprefix("agents/")
    executor = chat.services.runs

    # A run another server started, wrote an event for, and died running.
    run_id = await orphan_run(chat, agent_id)
    written = [event for event in events[:1]]
    await executor.log.append(
        run_id,
        [LoggedEvent(1, _renumbered(written[0], run_id, 1).SerializeToString())],
    )
    following = asyncio.create_task(
        _collect(
            chat.org_a.runs.StreamRun(
                message_service_pb2.StreamRunRequest(name=f"runs/{run_id}", after_seq=1)
            )
        )
    )

    assert await executor.close_lost_runs() == [run_id]

    tail = await asyncio.wait_for(following, 10)
    assert kinds(tail) == ["stop_reason", "usage"]
    assert [event.seq for event in tail] == [2, 3]
    assert tail[0].stop_reason.stop_reason == run_pb2.STOP_REASON_OWNER_LOST
    run = await get_run(chat.org_a, f"runs/{run_id}")
    assert (run.status, run.stop_reason) == (
        run_pb2.RUN_STATUS_FAILED,
        run_pb2.STOP_REASON_OWNER_LOST,
    )
    assert await executor.close_lost_runs() == []


async def test_a_sweep_skips_a_lost_run_another_transaction_holds(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    """Sweeps never wait on a locked run (so several servers' sweeps cannot deadlock)."""
    if not chat.database.choice.is_postgresql:
        pytest.skip("SQLite runs one writer at a time: nothing to skip")
    agent = await new_agent(chat.org_a)
    run_id = await orphan_run(chat, agent.removeprefix("agents/"))
    executor = chat.services.runs
    async with chat.database.engine.connect() as holder:
        transaction = await holder.begin()
        await holder.exec_driver_sql("SELECT id FROM runs WHERE id = $1 FOR UPDATE", (run_id,))
        assert await asyncio.wait_for(executor.close_lost_runs(), 5) == []
        await transaction.rollback()
    assert await executor.close_lost_runs() == [run_id]
    run = await get_run(chat.org_a, f"runs/{run_id}")
    assert run.stop_reason == run_pb2.STOP_REASON_OWNER_LOST


def _clock_ahead(monkeypatch: pytest.MonkeyPatch, ahead: timedelta) -> None:
    """This server's clock runs ``ahead`` of the database's (and of every other server's)."""

    def skewed() -> datetime:
        return utc_now() + ahead

    for module in (run_executor_module, clock_module, messages_module):
        monkeypatch.setattr(module, "utc_now", skewed)


async def test_a_server_whose_clock_runs_ahead_leaves_live_runs_alone(
    chat: ApiHarness, fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases are judged on the database's clock, not on each replica's own."""
    if not chat.database.choice.is_postgresql:
        pytest.skip("SQLite serves one machine: its writers share one clock")
    agent = await new_agent(chat.org_a)
    run_id = await orphan_run(chat, agent.removeprefix("agents/"), lease=timedelta(seconds=30))
    _clock_ahead(monkeypatch, timedelta(hours=1))
    executor = chat.services.runs

    assert await executor.close_lost_runs() == []  # by its own clock the lease lapsed an hour ago
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await stream(chat.org_a, agent, "Hi")
    failure = unpack_detail(rich_status(busy.value), error_details_pb2.PreconditionFailure)
    assert failure is not None and [v.type for v in failure.violations] == ["AGENT_BUSY"]

    run = await get_run(chat.org_a, f"runs/{run_id}")
    assert run.status == run_pb2.RUN_STATUS_RUNNING


async def test_a_server_whose_clock_runs_behind_writes_leases_on_the_database_clock(
    chat: ApiHarness, fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server an hour behind would write leases that lapsed long ago (by everyone else's
    clock): its new runs' leases and its renewals are on the database's clock instead."""
    if not chat.database.choice.is_postgresql:
        pytest.skip("SQLite serves one machine: its writers share one clock")
    executor = chat.services.runs
    true_time = utc_now
    _clock_ahead(monkeypatch, timedelta(hours=-1))
    await executor.sync_clock()
    assert abs(executor.clock_offset - timedelta(hours=1)) < timedelta(seconds=2)

    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Slow.", delay=30))
    started = await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="Hi", background=True)
    )
    run_id = started.run.name.removeprefix("runs/")

    async def lease_left() -> timedelta:
        async with chat.database.read(chat.org_a.caller.organization_id) as session:
            expires = await session.scalar(select(Run.lease_expires_at).where(Run.id == run_id))
        assert expires is not None
        return expires - true_time()  # type: ignore[no-any-return]

    around_a_lease = (executor.lease - timedelta(seconds=3), executor.lease + timedelta(seconds=2))
    assert around_a_lease[0] < await lease_left() < around_a_lease[1]  # as inserted
    await executor.renew_leases()
    assert around_a_lease[0] < await lease_left() < around_a_lease[1]  # as renewed
    assert await executor.close_lost_runs() == []
    await chat.org_a.runs.CancelRun(message_service_pb2.CancelRunRequest(name=started.run.name))


async def test_a_run_without_any_lease_is_taken_for_lost(chat: ApiHarness) -> None:
    """A run a server older than leases left running is ended like one whose lease lapsed."""
    agent = await new_agent(chat.org_a)
    run_id = await orphan_run(chat, agent.removeprefix("agents/"), lease=None)
    assert await chat.services.runs.close_lost_runs() == [run_id]


async def test_another_organization_cannot_follow_or_cancel_a_run(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Mine.", delay=0.5))
    started = await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="Hi", background=True)
    )
    run_name = started.run.name
    b = chat.org_b

    for attempt in (
        resume(b, run_name, 0),
        b.runs.CancelRun(message_service_pb2.CancelRunRequest(name=run_name)),
        b.messages.CancelTurn(message_service_pb2.CancelTurnRequest(agent=agent)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await attempt
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    events = await resume(chat.org_a, run_name, 0)
    assert kinds(events) == ["assistant_message", "stop_reason", "usage"]


async def paused_for_approval(
    chat: ApiHarness, fake_provider: FakeProvider
) -> tuple[str, list[TurnEvent]]:
    """An agent whose turn stopped on an approval request for call "p1", and that turn's events."""
    agent = await new_agent(
        chat.org_a, [{"requires_approval": {"tool_name": "conversation_search"}}]
    )
    fake_provider.script(
        Reply(tool_calls=[ToolCall("conversation_search", {"query": "cats"}, id="p1")])
    )
    return agent, await stream(chat.org_a, agent, "Search for cats")


async def orphan_run(
    chat: ApiHarness, agent_id: str, *, lease: timedelta | None = timedelta(seconds=-1)
) -> str:
    """A running run of ``agent_id`` owned by another server, its lease ending ``lease`` from
    now (by default lapsed: its server died)."""

    async def insert(session: Any) -> str:
        run = Run(
            agent_id=agent_id,
            status="running",
            metadata_={},
            lease_owner="elsewhere",
            lease_expires_at=None if lease is None else utc_now() + lease,
        )
        session.add(run)
        await session.flush()
        return str(run.id)

    return await chat.database.run_transaction(insert, chat.org_a.caller.organization_id)


async def _collect(call: AsyncIterator[TurnEvent]) -> list[TurnEvent]:
    return [event async for event in call]


async def _wait_for_running(client: Client, agent: str) -> None:
    for _ in range(200):
        runs = await client.runs.ListRuns(
            message_service_pb2.ListRunsRequest(agent=agent, statuses=[run_pb2.RUN_STATUS_RUNNING])
        )
        if runs.runs:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the run never started")


def _renumbered(event: TurnEvent, run_id: str, seq: int) -> TurnEvent:
    copy = TurnEvent()
    copy.CopyFrom(event)
    copy.run, copy.seq = f"runs/{run_id}", seq
    return copy


async def test_renewal_extends_the_lease_and_catches_a_missed_cancellation(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Too late.", delay=30))
    started = await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="Hi", background=True)
    )
    run_id = started.run.name.removeprefix("runs/")
    organization_id = chat.org_a.caller.organization_id
    executor = chat.services.runs

    async def lease_of() -> Run:
        async with chat.database.read(organization_id) as session:
            run = await session.get(Run, run_id)
            assert run is not None
            return run

    before = await lease_of()
    assert before.lease_owner == executor.owner and before.lease_expires_at is not None
    await asyncio.sleep(0.05)
    await executor.renew_leases()
    assert (await lease_of()).lease_expires_at > before.lease_expires_at  # type: ignore[operator]

    # Another replica asked to cancel, but its signal never arrived here.
    async def ask_to_cancel(session: object) -> None:
        run = await session.get(Run, run_id)  # type: ignore[attr-defined]
        run.cancel_requested_at = utc_now()

    await chat.database.run_transaction(ask_to_cancel, organization_id)
    await executor.renew_leases()

    events = await asyncio.wait_for(resume(chat.org_a, started.run.name, 0), 10)
    assert kinds(events) == ["stop_reason", "usage"]
    assert events[0].stop_reason.stop_reason == run_pb2.STOP_REASON_CANCELLED


async def test_a_retry_after_the_events_expired_returns_the_stored_run(
    settings: Settings, database: Database, fake_provider: FakeProvider
) -> None:
    backend = await open_event_log(None, retention_seconds=0.2, max_length=100)
    async for chat in _harness(settings, database, fake_provider, backend):
        agent = await new_agent(chat.org_a)
        fake_provider.script(Reply(text="Once."))
        request = message_service_pb2.SendMessageRequest(
            agent=agent, text="Hi", request_id=str(uuid.uuid4())
        )
        first = await chat.org_a.messages.SendMessage(request)
        await asyncio.sleep(0.5)

        assert await chat.org_a.messages.SendMessage(request) == first
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await resume(chat.org_a, first.run.name, 0)
        assert reason_of(rich_status(expired.value)) == "RUN_EVENTS_EXPIRED"


# --- races and failures found in review -------------------------------------------------


async def _ended(client: Client, run: str) -> run_pb2.Run:
    for _ in range(400):
        found = await get_run(client, run)
        if found.status != run_pb2.RUN_STATUS_RUNNING:
            return found
        await asyncio.sleep(0.025)
    raise AssertionError(f"{run} never ended")


async def test_a_blip_of_the_event_log_is_retried_and_the_run_completes(
    chat: ApiHarness, fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Hello."))
    log = chat.services.runs.log
    real_append = log.append
    failures = [EventLogUnavailableError("a blip")]

    async def flaky(run_id: str, events: Sequence[LoggedEvent]) -> None:
        if failures:
            raise failures.pop()
        await real_append(run_id, events)

    monkeypatch.setattr(log, "append", flaky)

    events = await stream(chat.org_a, agent, "Hi")

    assert kinds(events) == ["assistant_message", "stop_reason", "usage"]
    assert (await get_run(chat.org_a, events[0].run)).status == run_pb2.RUN_STATUS_COMPLETED


async def test_a_log_that_stays_down_fails_the_run_rather_than_cancelling_it(
    chat: ApiHarness, fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await new_agent(chat.org_a)
    # Two steps: the log has failed for good by the time the second answer comes.
    fake_provider.script(
        Reply(tool_calls=[ToolCall("conversation_search", {"query": "tea"}, id="c1")]),
        Reply(text="Too late to be followed.", delay=0.5),
    )
    monkeypatch.setattr(writer_module, "APPEND_RETRY_DELAYS", (0.01,))

    async def down(run_id: str, events: Sequence[LoggedEvent]) -> None:
        raise EventLogUnavailableError("down")

    monkeypatch.setattr(chat.services.runs.log, "append", down)
    started = await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="Hi", background=True)
    )

    run = await _ended(chat.org_a, started.run.name)

    assert (run.status, run.stop_reason) == (run_pb2.RUN_STATUS_FAILED, run_pb2.STOP_REASON_ERROR)
    assert not run.HasField("cancel_time") and "event log" in run.error


async def test_a_cancel_while_a_step_is_stored_stops_before_the_next_model_call(
    chat: ApiHarness, fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(
        Reply(tool_calls=[ToolCall("conversation_search", {"query": "tea"}, id="c1")]),
        Reply(text="Never asked for."),
    )
    executor = chat.services.runs
    real_observe = messages_module._TurnRecorder.observe

    async def observe(recorder: Any, event: Any) -> None:
        await real_observe(recorder, event)
        if isinstance(event, StepStarted) and event.step == 2:
            # Asked while step 1 was being stored, after the loop's own check.
            executor.cancel_local(recorder.run_id)

    monkeypatch.setattr(messages_module._TurnRecorder, "observe", observe)

    events = await asyncio.wait_for(stream(chat.org_a, agent, "Any tea?"), 20)

    assert kinds(events) == ["tool_call", "tool_return", "stop_reason", "usage"]
    assert events[2].stop_reason.stop_reason == run_pb2.STOP_REASON_CANCELLED
    assert len(fake_provider.requests) == 1


async def test_closing_a_lost_runs_log_never_fails_the_turn_that_found_it(
    chat: ApiHarness, fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await new_agent(chat.org_a)
    agent_id = agent.removeprefix("agents/")
    executor = chat.services.runs

    lost = await orphan_run(chat, agent_id)

    async def broken(*args: object) -> None:
        raise EventLogUnavailableError("down for a moment")

    monkeypatch.setattr(executor, "close_log", broken)
    fake_provider.script(Reply(text="Hello."))

    events = await stream(chat.org_a, agent, "Hi")

    assert kinds(events) == ["assistant_message", "stop_reason", "usage"]
    assert (await get_run(chat.org_a, f"runs/{lost}")).stop_reason == (
        run_pb2.STOP_REASON_OWNER_LOST
    )


async def test_a_paused_run_being_answered_can_no_longer_be_cancelled(
    chat: ApiHarness, fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, paused = await paused_for_approval(chat, fake_provider)
    real_checkpoint = messages_module._TurnRecorder._checkpoint

    async def slow_checkpoint(recorder: Any, stop: Any) -> None:
        await asyncio.sleep(0.5)  # the approved call's result is not stored yet
        await real_checkpoint(recorder, stop)

    monkeypatch.setattr(messages_module._TurnRecorder, "_checkpoint", slow_checkpoint)
    fake_provider.script(Reply(text="Nothing about cats."))
    answering = asyncio.create_task(
        _collect(
            chat.org_a.messages.SubmitApproval(
                message_service_pb2.SubmitApprovalRequest(agent=agent, call_id="p1", approve=True)
            )
        )
    )
    await _wait_for_running(chat.org_a, agent)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await chat.org_a.runs.CancelRun(
            message_service_pb2.CancelRunRequest(name=paused[0].run), timeout=10
        )

    assert reason_of(rich_status(refused.value)) == "RUN_ALREADY_ENDED"
    events = await asyncio.wait_for(answering, 20)
    assert kinds(events) == ["tool_return", "assistant_message", "stop_reason", "usage"]
    assert (await get_run(chat.org_a, events[0].run)).status == run_pb2.RUN_STATUS_COMPLETED
