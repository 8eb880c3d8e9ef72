"""MessageService and RunService through the stubs: turns, streams, runs, isolation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2

from engram.config.settings import Settings
from engram.rpc.errors import reason_of, unpack_detail
from engram.store.database import Database
from engram.v1 import (
    agent_pb2,
    agent_service_pb2,
    block_pb2,
    message_pb2,
    message_service_pb2,
    run_pb2,
    tool_rule_pb2,
)
from support.api import ApiHarness, Client, rich_status, running_api
from support.fake_provider import ErrorReply, FakeProvider, Reply, ToolCall
from support.llm import MODEL, fake_registry

TurnEvent = message_service_pb2.TurnEvent


@asynccontextmanager
async def chat_server(
    settings: Settings, database: Database, fake_provider: FakeProvider, ping_seconds: float
) -> AsyncIterator[ApiHarness]:
    registry = fake_registry(fake_provider)
    configured = settings.model_copy(update={"stream_ping_interval_seconds": ping_seconds})
    try:
        async with running_api(configured, database, registry) as harness:
            yield harness
    finally:
        await registry.close()


@pytest.fixture
async def chat(
    settings: Settings, database: Database, fake_provider: FakeProvider
) -> AsyncIterator[ApiHarness]:
    # Pings far apart, so that a slow moment (a garbage collection, a loaded CI
    # machine) never puts one in a stream a test expects exactly.
    async with chat_server(settings, database, fake_provider, 30.0) as harness:
        yield harness


@pytest.fixture
async def chat_with_fast_pings(
    settings: Settings, database: Database, fake_provider: FakeProvider
) -> AsyncIterator[ApiHarness]:
    async with chat_server(settings, database, fake_provider, 0.05) as harness:
        yield harness


async def new_agent(client: Client, agent_type: int = agent_pb2.AGENT_TYPE_NATIVE) -> str:
    agent = await client.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(display_name="pal", model=MODEL, agent_type=agent_type),
            memory_blocks=[block_pb2.Block(label="human", value="Name: Ada", limit=200)],
        )
    )
    return str(agent.name)


async def stream(client: Client, agent: str, text: str, **options: object) -> list[TurnEvent]:
    call = client.messages.StreamMessage(
        message_service_pb2.StreamMessageRequest(agent=agent, text=text, **options)
    )
    return [event async for event in call]


def kinds(events: Sequence[TurnEvent]) -> list[str]:
    return [str(event.WhichOneof("event")) for event in events]


async def test_send_message_returns_the_run_and_its_messages(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Hello, Ada.", prompt_tokens=30, completion_tokens=4))

    response = await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="Hi!")
    )

    run = response.run
    assert run.status == run_pb2.RUN_STATUS_COMPLETED
    assert run.stop_reason == run_pb2.STOP_REASON_END_TURN
    assert (run.usage.prompt_tokens, run.usage.completion_tokens) == (30, 4)
    assert run.usage.step_count == 1 and run.agent == agent
    assert [(m.role, m.text) for m in response.messages] == [
        (message_pb2.MESSAGE_ROLE_USER, "Hi!"),
        (message_pb2.MESSAGE_ROLE_ASSISTANT, "Hello, Ada."),
    ]
    assert all(m.run == run.name for m in response.messages)
    assert response.messages[0].name.startswith(agent + "/messages/message-")

    assert await chat.org_a.runs.GetRun(message_service_pb2.GetRunRequest(name=run.name)) == run
    steps = await chat.org_a.runs.ListRunSteps(
        message_service_pb2.ListRunStepsRequest(parent=run.name)
    )
    assert [(s.provider, s.model, s.usage.prompt_tokens) for s in steps.steps] == [
        ("openai", "gpt-test", 30)
    ]
    listed = await chat.org_a.messages.ListMessages(
        message_service_pb2.ListMessagesRequest(parent=agent)
    )
    assert list(listed.messages) == list(response.messages)
    runs = await chat.org_a.runs.ListRuns(message_service_pb2.ListRunsRequest(agent=agent))
    assert [r.name for r in runs.runs] == [run.name]


async def test_a_streamed_turn_numbers_its_events_and_ends_with_stop_then_usage(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(
        Reply(
            tool_calls=[
                ToolCall("memory_insert", {"label": "human", "new_string": "Likes tea."}, id="c1")
            ]
        ),
        Reply(text="Noted."),
    )

    events = await stream(chat.org_a, agent, "I like tea.")

    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert len({event.run for event in events}) == 1 and events[0].run.startswith("runs/run-")
    assert kinds(events) == [
        "tool_call",
        "tool_return",
        "assistant_message",
        "stop_reason",
        "usage",
    ]
    assert [event.step for event in events] == [1, 1, 2, 0, 0]
    assert events[1].tool_return.ok and events[1].tool_return.call_id == "c1"
    assert events[-2].stop_reason.stop_reason == run_pb2.STOP_REASON_END_TURN
    assert events[-1].usage.usage.step_count == 2
    block = await chat.org_a.agents.GetAgentBlock(
        agent_service_pb2.GetAgentBlockRequest(agent=agent, label="human")
    )
    assert block.value == "Name: Ada\nLikes tea."


async def test_token_streaming_sends_pieces_of_one_step(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="A reply that arrives in several pieces."))
    events = await stream(chat.org_a, agent, "Hi", stream_tokens=True)
    pieces = [e for e in events if e.WhichOneof("event") == "assistant_message"]
    assert len(pieces) > 1 and {e.step for e in pieces} == {1}
    assert "".join(e.assistant_message.text for e in pieces) == (
        "A reply that arrives in several pieces."
    )


async def test_a_slow_model_gets_pings(
    chat_with_fast_pings: ApiHarness, fake_provider: FakeProvider
) -> None:
    chat = chat_with_fast_pings
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Finally.", delay=0.4))
    events = await stream(chat.org_a, agent, "Hi")
    assert kinds(events)[0] == "ping"
    assert kinds(events)[-3:] == ["assistant_message", "stop_reason", "usage"]
    # Pings are not part of the run's stream: they repeat the last event's seq (0 at first).
    logged = [event for event in events if event.WhichOneof("event") != "ping"]
    assert [event.seq for event in logged] == list(range(1, len(logged) + 1))
    last_seen = 0
    for event in events:
        if event.WhichOneof("event") == "ping":
            assert event.seq == last_seen
        last_seen = event.seq


async def test_a_provider_failure_ends_the_stream_with_an_error_event(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(ErrorReply.bad_key())
    events = await stream(chat.org_a, agent, "Hi")
    assert kinds(events) == ["error"]
    status = events[0].error.status
    assert status.code == code_pb2.FAILED_PRECONDITION
    assert reason_of(status) == "PROVIDER_AUTH_FAILED"
    run = await chat.org_a.runs.GetRun(message_service_pb2.GetRunRequest(name=events[0].run))
    assert run.status == run_pb2.RUN_STATUS_FAILED
    assert run.stop_reason == run_pb2.STOP_REASON_LLM_API_ERROR

    fake_provider.script(ErrorReply.bad_key())
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await chat.org_a.messages.SendMessage(
            message_service_pb2.SendMessageRequest(agent=agent, text="Hi")
        )
    # The caller's credentials are fine: the provider's key is the operator's problem.
    assert unary.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("method", ["SendMessage", "StreamMessage"])
async def test_bad_requests_fail_before_any_run(chat: ApiHarness, method: str) -> None:
    agent = await new_agent(chat.org_a)
    request_type = getattr(message_service_pb2, f"{method}Request")
    for request, code in (
        (request_type(agent=agent, text="  "), grpc.StatusCode.INVALID_ARGUMENT),
        (request_type(agent="agents/nope", text="hi"), grpc.StatusCode.INVALID_ARGUMENT),
        (request_type(agent=agent, text="hi", max_steps=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (
            request_type(agent="agents/agent-00000000-0000-4000-8000-000000000000", text="hi"),
            grpc.StatusCode.NOT_FOUND,
        ),
    ):
        call = getattr(chat.org_a.messages, method)(request)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            if method == "SendMessage":
                await call
            else:
                async for _ in call:
                    pass
        assert refused.value.code() == code
        assert rich_status(refused.value).code == code.value[0]
    runs = await chat.org_a.runs.ListRuns(message_service_pb2.ListRunsRequest())
    assert list(runs.runs) == []


async def test_one_turn_at_a_time_per_agent(chat: ApiHarness, fake_provider: FakeProvider) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="slow", delay=1.0))
    first = asyncio.ensure_future(stream(chat.org_a, agent, "one"))
    # Wait until the first turn is with the model (its run is then surely open).
    for _ in range(200):
        if fake_provider.requests:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await chat.org_a.messages.SendMessage(
            message_service_pb2.SendMessageRequest(agent=agent, text="two")
        )
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already running a turn" in (busy.value.details() or "")
    assert kinds(await first)[-2:] == ["stop_reason", "usage"]


async def test_reset_empties_the_context_but_keeps_the_history(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="first answer"), Reply(text="second answer"))
    await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="remember me")
    )
    await chat.org_a.messages.ResetMessages(message_service_pb2.ResetMessagesRequest(agent=agent))
    await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="again")
    )
    last = fake_provider.requests[-1].body
    assert last is not None
    sent = [m.get("content") for m in last["messages"][1:]]
    assert sent == ["again"]
    history = await chat.org_a.messages.ListMessages(
        message_service_pb2.ListMessagesRequest(
            parent=agent, roles=[message_pb2.MESSAGE_ROLE_USER], newest_first=True
        )
    )
    assert [m.text for m in history.messages] == ["again", "remember me"]


async def test_another_organization_sees_nothing(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="private"))
    response = await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="secret")
    )
    run = response.run.name
    b = chat.org_b
    for call in (
        b.messages.SendMessage(message_service_pb2.SendMessageRequest(agent=agent, text="hi")),
        b.messages.ListMessages(message_service_pb2.ListMessagesRequest(parent=agent)),
        b.messages.ResetMessages(message_service_pb2.ResetMessagesRequest(agent=agent)),
        b.runs.GetRun(message_service_pb2.GetRunRequest(name=run)),
        b.runs.ListRunSteps(message_service_pb2.ListRunStepsRequest(parent=run)),
        b.runs.ListRuns(message_service_pb2.ListRunsRequest(agent=agent)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await stream(b, agent, "hi")
    assert streamed.value.code() == grpc.StatusCode.NOT_FOUND
    assert list((await b.runs.ListRuns(message_service_pb2.ListRunsRequest())).runs) == []
    # Nothing of org A's changed: one run, the same two messages.
    listed = await chat.org_a.messages.ListMessages(
        message_service_pb2.ListMessagesRequest(parent=agent)
    )
    assert list(listed.messages) == list(response.messages)


async def test_heartbeat_agents_answer_through_send_message(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a, agent_pb2.AGENT_TYPE_HEARTBEAT)
    fake_provider.script(
        Reply(
            tool_calls=[
                ToolCall("send_message", {"message": "Hi Ada!", "request_heartbeat": False})
            ]
        )
    )
    events = await stream(chat.org_a, agent, "Hello")
    assert kinds(events) == [
        "tool_call",
        "assistant_message",
        "tool_return",
        "stop_reason",
        "usage",
    ]
    assert events[1].assistant_message.text == "Hi Ada!"


# --- approvals -----------------------------------------------------------------------


async def paused_agent(client: Client, fake_provider: FakeProvider) -> str:
    """An agent whose turn stopped on conversation_search call p1, asserted through the stream."""
    needs_approval = json_format.ParseDict(
        {"requires_approval": {"tool_name": "conversation_search"}}, tool_rule_pb2.ToolRule()
    )
    agent = await client.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(
                display_name="pal",
                model=MODEL,
                agent_type=agent_pb2.AGENT_TYPE_NATIVE,
                tool_rules=[needs_approval],
            )
        )
    )
    fake_provider.script(
        Reply(tool_calls=[ToolCall("conversation_search", {"query": "cats"}, id="p1")])
    )
    events = await stream(client, agent.name, "Search for cats")
    assert kinds(events) == ["tool_call", "approval_request", "stop_reason", "usage"]
    assert events[1].approval_request.call_id == "p1"
    assert events[2].stop_reason.stop_reason == run_pb2.STOP_REASON_REQUIRES_APPROVAL
    return str(agent.name)


async def submit(client: Client, agent: str, call_id: str, **options: object) -> list[TurnEvent]:
    call = client.messages.SubmitApproval(
        message_service_pb2.SubmitApprovalRequest(agent=agent, call_id=call_id, **options)
    )
    return [event async for event in call]


async def test_an_approval_streams_the_tool_result_then_the_rest_of_the_turn(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await paused_agent(chat.org_a, fake_provider)
    fake_provider.script(Reply(text="No cats so far.", prompt_tokens=9, completion_tokens=2))

    events = await submit(chat.org_a, agent, "p1", approve=True)

    assert kinds(events) == ["tool_return", "assistant_message", "stop_reason", "usage"]
    assert [event.seq for event in events] == [1, 2, 3, 4]
    assert len({event.run for event in events}) == 1 and events[0].run.startswith("runs/run-")
    assert events[0].tool_return.call_id == "p1" and events[0].tool_return.ok
    assert events[1].assistant_message.text == "No cats so far."
    assert events[2].stop_reason.stop_reason == run_pb2.STOP_REASON_END_TURN
    assert events[3].usage.usage.prompt_tokens == 9
    run = await chat.org_a.runs.GetRun(message_service_pb2.GetRunRequest(name=events[0].run))
    assert run.status == run_pb2.RUN_STATUS_COMPLETED


async def test_a_denial_is_streamed_and_answered_by_the_agent(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await paused_agent(chat.org_a, fake_provider)
    fake_provider.script(Reply(text="Understood, I won't search."))

    events = await submit(chat.org_a, agent, "p1", approve=False, reason="not today")

    assert kinds(events) == ["tool_return", "assistant_message", "stop_reason", "usage"]
    assert not events[0].tool_return.ok and "not today" in events[0].tool_return.text
    history = await chat.org_a.messages.ListMessages(
        message_service_pb2.ListMessagesRequest(parent=agent)
    )
    roles = [m.role for m in history.messages]
    assert roles[-2:] == [message_pb2.MESSAGE_ROLE_TOOL, message_pb2.MESSAGE_ROLE_ASSISTANT]


async def test_reviewing_a_call_that_is_not_pending_fails_the_precondition(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await paused_agent(chat.org_a, fake_provider)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(chat.org_a, agent, "p2", approve=True)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    failure = unpack_detail(rich_status(refused.value), error_details_pb2.PreconditionFailure)
    assert failure is not None
    assert [v.type for v in failure.violations] == ["NO_PENDING_APPROVAL"]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await submit(chat.org_a, agent, "", approve=True)
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_another_organization_cannot_review_the_call(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await paused_agent(chat.org_a, fake_provider)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(chat.org_b, agent, "p1", approve=True)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    # Still pending for its owner.
    fake_provider.script(Reply(text="Done."))
    events = await submit(chat.org_a, agent, "p1", approve=True)
    assert kinds(events)[0] == "tool_return"


async def test_messages_can_be_listed_by_time(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="one"), Reply(text="two"))
    first = await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="first")
    )
    second = await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="second")
    )
    boundary = second.messages[0].create_time

    later = await chat.org_a.messages.ListMessages(
        message_service_pb2.ListMessagesRequest(parent=agent, start_time=boundary)
    )
    earlier = await chat.org_a.messages.ListMessages(
        message_service_pb2.ListMessagesRequest(parent=agent, end_time=boundary)
    )
    assert list(later.messages) == list(second.messages)
    assert list(earlier.messages) == list(first.messages)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await chat.org_a.messages.ListMessages(
            message_service_pb2.ListMessagesRequest(
                parent=agent, start_time=boundary, end_time=boundary
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_context_window_is_reported_by_section(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    fake_provider.script(Reply(text="Hello, Ada."))
    await chat.org_a.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text="Hi!")
    )

    window = await chat.org_a.messages.GetContextWindow(
        message_service_pb2.GetContextWindowRequest(name=f"{agent}/contextWindow")
    )

    assert window.name == f"{agent}/contextWindow"
    assert window.limit == 128_000
    assert window.message_count == 2
    assert "Name: Ada" in window.system_message
    sections = (
        window.system_prompt_tokens,
        window.core_memory_tokens,
        window.tool_rules_tokens,
        window.memory_statistics_tokens,
        window.files_tokens,
        window.summary_tokens,
        window.messages_tokens,
        window.tool_definitions_tokens,
    )
    assert window.total_tokens == sum(sections)
    assert window.core_memory_tokens > 0 and window.messages_tokens > 0
    assert window.tool_definitions_tokens > 0  # the base memory tools
    assert window.summary_tokens == 0 and window.tool_rules_tokens == 0

    for name, code in (
        (
            f"{agent}/contextWindow".replace("agent-", "agent-0", 1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (agent, grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await chat.org_a.messages.GetContextWindow(
                message_service_pb2.GetContextWindowRequest(name=name)
            )
        assert refused.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await chat.org_b.messages.GetContextWindow(
            message_service_pb2.GetContextWindowRequest(name=f"{agent}/contextWindow")
        )
    assert foreign.value.code() == grpc.StatusCode.NOT_FOUND
