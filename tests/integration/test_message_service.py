"""MessageService on both engines: turns run against the fake provider, stored step by step."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from engram.adapters.llm.errors import ProviderAuthError
from engram.adapters.llm.registry import (
    ProviderNotConfiguredError,
)
from engram.services.admin import AdminService, ensure_default_identity
from engram.services.agents import AgentService, NewAgent
from engram.services.blocks import BlockService
from engram.services.caller import Caller
from engram.services.errors import FailedPreconditionError, InvalidArgumentError
from engram.services.messages import (
    CUSTOM_TOOL_UNAVAILABLE,
    UNANSWERED_CALL_NOTICE,
    MessageService,
    RunEvent,
    RunStarted,
)
from engram.services.pagination import InvalidPageTokenError
from engram.services.runtime.turn import (
    DENIED_NOTICE,
    HEARTBEAT_ARGUMENT,
    AssistantEvent,
    StepStarted,
    StopReason,
    ToolReturnEvent,
    TurnEvent,
    TurnFinished,
)
from engram.services.tools import ToolService
from engram.store.database import Database
from engram.store.errors import NotFoundError
from engram.store.models import Message, Run
from engram.store.types import utc_now
from support.fake_provider import ErrorReply, FakeProvider, Reply, ToolCall
from support.llm import fake_registry

MODEL = "openai/gpt-test"


@dataclass
class World:
    database: Database
    caller: Caller
    agents: AgentService
    service: MessageService
    fake: FakeProvider


@pytest.fixture
async def world(database: Database, fake_provider: FakeProvider) -> AsyncIterator[World]:
    caller = await ensure_default_identity(database)
    registry = fake_registry(fake_provider)
    try:
        yield World(
            database,
            caller,
            AgentService(database),
            MessageService(database, registry),
            fake_provider,
        )
    finally:
        await registry.close()


async def make_agent(world: World, agent_type: str = "native", **values: Any) -> str:
    view = await world.agents.create(
        world.caller,
        NewAgent(
            values={"display_name": "pal", "agent_type": agent_type, "model": MODEL, **values},
            memory_blocks=[
                {"label": "human", "value": "Name: Ada", "limit": 200},
                {"label": "persona", "value": "Helpful."},
            ],
        ),
        request_id="",
    )
    return view.agent.id


async def send(world: World, agent_id: str, text: str, **options: Any) -> list[RunEvent]:
    return [event async for event in world.service.send(world.caller, agent_id, text, **options)]


def turn_events(events: Sequence[RunEvent]) -> list[TurnEvent]:
    """The loop's events, message ids blanked (random; api/test_token_streaming checks them)."""
    return [
        replace(item.event, message_id="") if hasattr(item.event, "message_id") else item.event
        for item in events
        if not isinstance(item.event, RunStarted)
    ]


def finished(events: Sequence[RunEvent]) -> TurnFinished:
    last = events[-1].event
    assert isinstance(last, TurnFinished)
    return last


async def history(world: World, agent_id: str, **options: Any) -> list[Message]:
    messages, _ = await world.service.list_messages(
        world.caller, agent_id, page_size=100, page_token="", **options
    )
    return messages


def first_body(fake: FakeProvider) -> dict[str, Any]:
    return bodies(fake)[0]


def bodies(fake: FakeProvider) -> list[dict[str, Any]]:
    return [r.body for r in fake.requests if r.body is not None]


def sent_messages(fake: FakeProvider, index: int = -1) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = bodies(fake)[index]["messages"]
    return messages


async def test_a_native_turn_is_stored(world: World) -> None:
    world.fake.script(Reply(text="Hello, Ada.", prompt_tokens=7, completion_tokens=3))
    agent_id = await make_agent(world)

    events = await send(world, agent_id, "Hi there")

    assert isinstance(events[0].event, RunStarted)
    run_id = events[0].run_id
    assert all(item.run_id == run_id for item in events)
    assert AssistantEvent("Hello, Ada.") in turn_events(events)
    assert finished(events).stop_reason is StopReason.END_TURN

    messages = await history(world, agent_id)
    assert [(m.role, m.text) for m in messages] == [
        ("user", "Hi there"),
        ("assistant", "Hello, Ada."),
    ]
    assert [m.sequence_id for m in messages] == [1, 2]
    assert messages[0].content == [{"type": "text", "text": "Hi there"}]
    assert all(m.run_id == run_id for m in messages)

    view = await world.service.get_run(world.caller, run_id)
    assert (view.run.status, view.run.stop_reason) == ("completed", "end_turn")
    assert view.run.completed_at is not None and view.run.error is None
    assert (view.prompt_tokens, view.completion_tokens, view.step_count) == (7, 3, 1)
    steps, token = await world.service.list_steps(world.caller, run_id, 10, "")
    assert token == "" and len(steps) == 1
    step = steps[0]
    assert (step.status, step.provider, step.model) == ("completed", "openai", "gpt-test")
    assert (step.prompt_tokens, step.completion_tokens, step.total_tokens) == (7, 3, 10)
    assert step.started_at is not None and step.finished_at is not None
    assert step.started_at <= step.finished_at
    assert messages[1].step_id == step.id and messages[0].step_id is None
    runs, _ = await world.service.list_runs(world.caller, agent_id, 10, "")
    assert [r.run.id for r in runs] == [run_id]
    assert [m.id for m in await world.service.messages_of_run(world.caller, run_id)] == [
        m.id for m in messages
    ]


async def test_a_memory_edit_is_stored_with_its_step(world: World) -> None:
    world.fake.script(
        Reply(
            tool_calls=[
                ToolCall("memory_insert", {"label": "human", "new_string": "Likes tea."}, id="c1")
            ],
            prompt_tokens=11,
            completion_tokens=4,
        ),
        Reply(text="Noted.", prompt_tokens=20, completion_tokens=2),
    )
    agent_id = await make_agent(world)

    events = await send(world, agent_id, "I like tea")
    assert finished(events).stop_reason is StopReason.END_TURN

    human = await world.agents.get_block(world.caller, agent_id, "human")
    block = (await BlockService(world.database).get(world.caller, human.block.id)).block
    assert block.value == "Name: Ada\nLikes tea."
    # The second step already saw the edited memory in its system message.
    assert "Likes tea." in sent_messages(world.fake, 1)[0]["content"]
    assert "Likes tea." not in sent_messages(world.fake, 0)[0]["content"]

    messages = await history(world, agent_id)
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
    call, result = messages[1], messages[2]
    assert call.tool_calls == [
        {
            "id": "c1",
            "name": "memory_insert",
            "arguments": '{"label":"human","new_string":"Likes tea."}',
        }
    ]
    assert (result.tool_call_id, result.name, result.is_error) == ("c1", "memory_insert", False)
    assert json.loads(result.content[0]["text"])["status"] == "ok"
    steps, _ = await world.service.list_steps(world.caller, events[0].run_id, 10, "")
    assert [(s.prompt_tokens, s.completion_tokens) for s in steps] == [(11, 4), (20, 2)]
    assert {m.step_id for m in messages[1:3]} == {steps[0].id}
    assert messages[3].step_id == steps[1].id


async def test_the_next_turn_sees_the_buffer_until_it_is_reset(world: World) -> None:
    world.fake.script(Reply(text="Nice."), Reply(text="Tom."), Reply(text="Who?"))
    agent_id = await make_agent(world)

    await send(world, agent_id, "My cat is Tom")
    await send(world, agent_id, "Who is my cat?")
    second = sent_messages(world.fake)
    assert [(m["role"], m["content"]) for m in second[1:]] == [
        ("user", "My cat is Tom"),
        ("assistant", "Nice."),
        ("user", "Who is my cat?"),
    ]
    assert second[0]["role"] == "system"

    await world.service.reset_messages(world.caller, agent_id)
    await send(world, agent_id, "Who is my cat?")
    third = sent_messages(world.fake)
    assert [m["role"] for m in third] == ["system", "user"]
    # Reset hides the history from the model, not from the store.
    assert len(await history(world, agent_id)) == 6
    assert "Messages in your conversation history (recall memory): 5" in third[0]["content"]


async def test_a_second_turn_on_a_busy_agent_is_refused(world: World) -> None:
    world.fake.script(Reply(text="Slowly.", delay=0.5), Reply(text="Now."))
    agent_id = await make_agent(world)

    first = world.service.send(world.caller, agent_id, "one")
    started = await anext(first)
    assert isinstance(started.event, RunStarted)
    # In this process: the lock.
    with pytest.raises(FailedPreconditionError) as busy:
        await anext(world.service.send(world.caller, agent_id, "two"))
    assert busy.value.violation_type == "AGENT_BUSY"
    assert busy.value.subject == f"agents/{agent_id}"
    # In another process (another service instance): the running run in the database.
    other_process = MessageService(world.database, world.service.providers)
    with pytest.raises(FailedPreconditionError) as elsewhere:
        await anext(other_process.send(world.caller, agent_id, "two"))
    assert elsewhere.value.violation_type == "AGENT_BUSY"
    with pytest.raises(FailedPreconditionError):
        await world.service.reset_messages(world.caller, agent_id)

    rest = [event async for event in first]
    assert finished([started, *rest]).stop_reason is StopReason.END_TURN
    # Once the turn is over the agent takes the next one.
    assert finished(await send(world, agent_id, "two")).stop_reason is StopReason.END_TURN
    runs, _ = await world.service.list_runs(world.caller, agent_id, 10, "")
    assert [r.run.status for r in runs] == ["completed", "completed"]


async def test_a_provider_error_fails_the_run(world: World) -> None:
    world.fake.script(ErrorReply.bad_key())
    agent_id = await make_agent(world)

    seen: list[RunEvent] = []
    with pytest.raises(ProviderAuthError):
        async for item in world.service.send(world.caller, agent_id, "Hello?"):
            seen.append(item)
    assert isinstance(seen[0].event, RunStarted)
    assert isinstance(seen[-1].event, StepStarted)

    view = await world.service.get_run(world.caller, seen[0].run_id)
    assert (view.run.status, view.run.stop_reason) == ("failed", "llm_api_error")
    assert view.run.error and "invalid api key" in view.run.error
    steps, _ = await world.service.list_steps(world.caller, seen[0].run_id, 10, "")
    assert [s.status for s in steps] == ["failed"]
    # The user's message is kept; nothing half-done from the failed step is.
    assert [m.role for m in await history(world, agent_id)] == ["user"]

    world.fake.script(Reply(text="Better now."))
    assert finished(await send(world, agent_id, "Again")).stop_reason is StopReason.END_TURN


async def test_cancelling_the_caller_cancels_the_run(world: World) -> None:
    world.fake.script(Reply(text="Too late.", delay=5))
    agent_id = await make_agent(world)
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def consume() -> None:
        async for item in world.service.send(world.caller, agent_id, "Hello?"):
            if isinstance(item.event, StepStarted):
                started.set_result(item.run_id)

    task = asyncio.create_task(consume())
    run_id = await started
    await asyncio.sleep(0.1)  # the model call is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    view = await world.service.get_run(world.caller, run_id)
    assert (view.run.status, view.run.stop_reason) == ("cancelled", "cancelled")
    steps, _ = await world.service.list_steps(world.caller, run_id, 10, "")
    assert [s.status for s in steps] == ["cancelled"]


async def test_a_listener_that_stops_early_cancels_the_run(world: World) -> None:
    agent_id = await make_agent(world)
    turn = world.service.send(world.caller, agent_id, "Hello?")
    run_id = (await anext(turn)).run_id
    assert isinstance((await anext(turn)).event, StepStarted)
    await turn.aclose()

    view = await world.service.get_run(world.caller, run_id)
    assert (view.run.status, view.run.stop_reason) == ("cancelled", "cancelled")
    assert world.fake.requests == []
    # The agent is free again.
    world.fake.script(Reply(text="Hi."))
    assert finished(await send(world, agent_id, "Hello?")).stop_reason is StopReason.END_TURN


async def test_list_messages_pages_and_filters(world: World) -> None:
    world.fake.script(Reply(text="A1"), Reply(text="A2"))
    agent_id = await make_agent(world)
    await send(world, agent_id, "U1")
    await send(world, agent_id, "U2")

    page, token = await world.service.list_messages(
        world.caller, agent_id, page_size=3, page_token=""
    )
    assert [m.text for m in page] == ["U1", "A1", "U2"] and token
    rest, last = await world.service.list_messages(
        world.caller, agent_id, page_size=3, page_token=token
    )
    assert [m.text for m in rest] == ["A2"] and last == ""

    newest, token = await world.service.list_messages(
        world.caller, agent_id, page_size=2, page_token="", newest_first=True
    )
    assert [m.text for m in newest] == ["A2", "U2"]
    older, _ = await world.service.list_messages(
        world.caller, agent_id, page_size=2, page_token=token, newest_first=True
    )
    assert [m.text for m in older] == ["A1", "U1"]

    assert [m.text for m in await history(world, agent_id, roles=["assistant"])] == ["A1", "A2"]
    with pytest.raises(InvalidPageTokenError):
        await world.service.list_messages(
            world.caller, agent_id, page_size=2, page_token=token, roles=["user"]
        )
    with pytest.raises(InvalidArgumentError):
        await history(world, agent_id, roles=["narrator"])


async def test_conversation_search_finds_an_earlier_message(world: World) -> None:
    world.fake.script(
        Reply(text="A fine name."),
        Reply(tool_calls=[ToolCall("conversation_search", {"query": "CAT"}, id="s1")]),
        Reply(text="Your cat is Tom."),
    )
    agent_id = await make_agent(world)
    await send(world, agent_id, "My cat is called Tom")
    await world.service.reset_messages(world.caller, agent_id)

    events = await send(world, agent_id, "What is my cat called?")

    result = next(e for e in turn_events(events) if isinstance(e, ToolReturnEvent))
    assert result.ok
    found = json.loads(result.text)
    # Only the earlier message: the question asked in this turn is already in view.
    assert [(f["role"], f["text"]) for f in found] == [("user", "My cat is called Tom")]
    assert finished(events).stop_reason is StopReason.END_TURN


async def test_a_heartbeat_agent_speaks_through_send_message(world: World) -> None:
    world.fake.script(
        Reply(
            tool_calls=[
                ToolCall("send_message", {"message": "Hi Ada!", HEARTBEAT_ARGUMENT: False}, id="m1")
            ]
        )
    )
    agent_id = await make_agent(world, agent_type="heartbeat")

    events = await send(world, agent_id, "Hello")

    assert AssistantEvent("Hi Ada!") in turn_events(events)
    assert finished(events).stop_reason is StopReason.END_TURN
    messages = await history(world, agent_id)
    assert [m.role for m in messages] == ["user", "assistant", "tool"]
    assert (
        messages[1].tool_calls is not None and messages[1].tool_calls[0]["name"] == "send_message"
    )
    assert messages[1].text == "Hi Ada!"  # what the user saw is searchable
    assert (messages[2].tool_call_id, messages[2].name) == ("m1", "send_message")


async def test_streamed_tokens_are_stored_whole(world: World) -> None:
    world.fake.script(Reply(text="A longer answer in pieces.", reasoning="Think first."))
    agent_id = await make_agent(world)

    events = await send(world, agent_id, "Go", stream_tokens=True)

    pieces = [e for e in turn_events(events) if isinstance(e, AssistantEvent)]
    assert len(pieces) > 1 and all(p.delta for p in pieces)
    stored = (await history(world, agent_id))[1]
    assert stored.text == "A longer answer in pieces."
    assert stored.content[0] == {"type": "reasoning", "text": "Think first.", "signature": ""}


async def test_a_paused_call_is_closed_by_the_next_message(world: World) -> None:
    world.fake.script(
        Reply(tool_calls=[ToolCall("conversation_search", {"query": "x"}, id="p1")]),
        Reply(text="Fine."),
    )
    agent_id = await make_agent(
        world, tool_rules=[{"requires_approval": {"tool_name": "conversation_search"}}]
    )

    first = await send(world, agent_id, "Search")
    assert finished(first).stop_reason is StopReason.REQUIRES_APPROVAL
    view = await world.service.get_run(world.caller, first[0].run_id)
    assert (view.run.status, view.run.stop_reason) == ("completed", "requires_approval")

    second = await send(world, agent_id, "Never mind")
    assert finished(second).stop_reason is StopReason.END_TURN
    # The provider got a well-formed history: the paused call has a result.
    closing = sent_messages(world.fake)[-2]
    assert closing["role"] == "tool" and closing["tool_call_id"] == "p1"
    assert json.loads(closing["content"])["result"] == UNANSWERED_CALL_NOTICE


ROLL_DIE_SOURCE = '''
def roll_die(sides: int) -> int:
    """Roll a die.

    Args:
        sides: How many sides the die has.
    """
    return 4
'''


async def test_custom_tools_are_offered_but_cannot_run_yet(world: World) -> None:
    tool = await ToolService(world.database).create(
        world.caller, {"source_code": ROLL_DIE_SOURCE, "return_char_limit": 500}, ""
    )
    agent_id = await make_agent(world)
    await world.agents.attach_tool(world.caller, agent_id, tool.id)
    world.fake.script(
        Reply(tool_calls=[ToolCall("roll_die", {"sides": 6}, id="r1")]), Reply(text="Sorry.")
    )

    events = await send(world, agent_id, "Roll a die")

    offered = {t["function"]["name"]: t["function"] for t in first_body(world.fake)["tools"]}
    assert offered["roll_die"]["description"].startswith("Roll a die.")
    assert "sides" in offered["roll_die"]["parameters"]["properties"]
    result = next(e for e in turn_events(events) if isinstance(e, ToolReturnEvent))
    assert (result.ok, result.text) == (False, CUSTOM_TOOL_UNAVAILABLE)
    stored = [m for m in await history(world, agent_id) if m.role == "tool"]
    assert stored[0].is_error and stored[0].text == CUSTOM_TOOL_UNAVAILABLE


async def test_an_agent_without_a_usable_model_is_refused_before_any_run(world: World) -> None:
    agent_id = await make_agent(world, model="")
    with pytest.raises(FailedPreconditionError):
        await send(world, agent_id, "Hello")
    unconfigured = await make_agent(world, model="anthropic/claude-test")
    with pytest.raises(ProviderNotConfiguredError):
        await send(world, unconfigured, "Hello")
    for agent in (agent_id, unconfigured):
        assert (await world.service.list_runs(world.caller, agent, 10, ""))[0] == []
        assert await history(world, agent) == []


async def test_a_stale_running_run_does_not_block_the_agent(world: World) -> None:
    agent_id = await make_agent(world)
    long_ago = utc_now() - timedelta(hours=1)

    async def crashed_run(session: AsyncSession) -> str:
        run = Run(
            agent_id=agent_id,
            status="running",
            metadata_={},
            created_at=long_ago,
            updated_at=long_ago,
        )
        session.add(run)
        await session.flush()
        return run.id

    stale = await world.database.run_transaction(crashed_run, world.caller.organization_id)
    world.fake.script(Reply(text="Back."))
    assert finished(await send(world, agent_id, "Hi")).stop_reason is StopReason.END_TURN
    view = await world.service.get_run(world.caller, stale)
    assert (view.run.status, view.run.stop_reason) == ("failed", "owner_lost")
    assert view.run.error and "lease" in view.run.error


async def test_a_foreign_organization_gets_not_found(world: World) -> None:
    world.fake.script(Reply(text="Hello."))
    agent_id = await make_agent(world)
    run_id = (await send(world, agent_id, "Hi"))[0].run_id
    admin = AdminService(world.database)
    bootstrap = Caller("", "", is_admin=True)
    other = await admin.create_organization(bootstrap, "other", "")
    stranger = Caller(other.id, (await admin.create_user(bootstrap, other.id, "eve", "")).id)

    with pytest.raises(NotFoundError):
        await anext(world.service.send(stranger, agent_id, "Hi"))
    with pytest.raises(NotFoundError):
        await world.service.list_messages(stranger, agent_id, page_size=10, page_token="")
    with pytest.raises(NotFoundError):
        await world.service.reset_messages(stranger, agent_id)
    with pytest.raises(NotFoundError):
        await world.service.get_run(stranger, run_id)
    with pytest.raises(NotFoundError):
        await world.service.list_steps(stranger, run_id, 10, "")
    with pytest.raises(NotFoundError):
        await world.service.list_runs(stranger, agent_id, 10, "")
    assert (await world.service.list_runs(stranger, None, 10, ""))[0] == []


# --- approvals -----------------------------------------------------------------------

SEARCH_NEEDS_APPROVAL = [{"requires_approval": {"tool_name": "conversation_search"}}]


async def review(
    world: World, agent_id: str, call_id: str, approve: bool, **options: Any
) -> list[RunEvent]:
    reviewed = world.service.submit_approval(world.caller, agent_id, call_id, approve, **options)
    return [event async for event in reviewed]


async def paused_agent(world: World, agent_type: str = "native") -> str:
    """An agent whose last turn stopped on conversation_search call p1, awaiting approval."""
    agent_id = await make_agent(world, agent_type, tool_rules=SEARCH_NEEDS_APPROVAL)
    first = await send(world, agent_id, "Search for cats")
    assert finished(first).stop_reason is StopReason.REQUIRES_APPROVAL
    return agent_id


async def test_an_approved_call_runs_and_the_turn_goes_on(world: World) -> None:
    world.fake.script(
        Reply(tool_calls=[ToolCall("conversation_search", {"query": "cats"}, id="p1")]),
        Reply(text="Nothing about cats yet."),
    )
    agent_id = await paused_agent(world)

    events = await review(world, agent_id, "p1", True)

    run_id = events[0].run_id
    answered = turn_events(events)[0]
    assert isinstance(answered, ToolReturnEvent)
    assert (answered.call_id, answered.name, answered.ok) == ("p1", "conversation_search", True)
    assert finished(events).stop_reason is StopReason.END_TURN
    view = await world.service.get_run(world.caller, run_id)
    assert (view.run.status, view.run.stop_reason, view.step_count) == ("completed", "end_turn", 1)
    # The model saw the call answered by the tool, and all of it is stored in the new run.
    assert sent_messages(world.fake)[-1]["tool_call_id"] == "p1"
    stored = await world.service.messages_of_run(world.caller, run_id)
    assert [(m.role, m.tool_call_id, m.is_error) for m in stored] == [
        ("tool", "p1", False),
        ("assistant", None, False),
    ]
    assert stored[0].step_id is None and stored[1].text == "Nothing about cats yet."
    # Answered now: the same call cannot be reviewed twice.
    with pytest.raises(FailedPreconditionError) as again:
        await review(world, agent_id, "p1", True)
    assert again.value.violation_type == "NO_PENDING_APPROVAL"


async def test_a_denied_call_is_refused_and_the_agent_reacts(world: World) -> None:
    world.fake.script(
        Reply(
            tool_calls=[
                ToolCall(
                    "conversation_search", {"query": "cats", HEARTBEAT_ARGUMENT: True}, id="p1"
                )
            ]
        ),
        Reply(
            tool_calls=[
                ToolCall("send_message", {"message": "Understood.", HEARTBEAT_ARGUMENT: False})
            ]
        ),
    )
    agent_id = await paused_agent(world, "heartbeat")

    events = await review(world, agent_id, "p1", False, reason="too private")

    denied = turn_events(events)[0]
    assert isinstance(denied, ToolReturnEvent)
    assert denied.call_id == "p1" and not denied.ok and "too private" in denied.text
    assert AssistantEvent("Understood.") in turn_events(events)
    assert finished(events).stop_reason is StopReason.END_TURN
    stored = await world.service.messages_of_run(world.caller, events[0].run_id)
    assert [(m.role, m.name) for m in stored][:2] == [
        ("tool", "conversation_search"),
        ("user", "engram"),
    ]
    assert stored[0].is_error and "too private" in stored[0].text
    assert stored[1].text == DENIED_NOTICE


async def test_only_the_pending_call_can_be_reviewed(world: World) -> None:
    world.fake.script(
        Reply(tool_calls=[ToolCall("conversation_search", {"query": "cats"}, id="p1")]),
        Reply(text="Fine."),
    )
    agent_id = await paused_agent(world)
    runs_before, _ = await world.service.list_runs(world.caller, agent_id, 10, "")

    with pytest.raises(FailedPreconditionError) as wrong:
        await review(world, agent_id, "p2", True)
    assert wrong.value.violation_type == "NO_PENDING_APPROVAL"
    assert wrong.value.subject == f"agents/{agent_id}"
    # Refused before a run exists.
    runs_after, _ = await world.service.list_runs(world.caller, agent_id, 10, "")
    assert len(runs_after) == len(runs_before)
    with pytest.raises(InvalidArgumentError):
        await review(world, agent_id, " ", True)

    # A new message closes the call: nothing is pending any more.
    await send(world, agent_id, "Never mind")
    with pytest.raises(FailedPreconditionError) as closed:
        await review(world, agent_id, "p1", True)
    assert closed.value.violation_type == "NO_PENDING_APPROVAL"


async def test_an_agent_that_never_paused_has_nothing_to_review(world: World) -> None:
    world.fake.script(Reply(text="Hello."))
    agent_id = await make_agent(world)
    with pytest.raises(FailedPreconditionError) as empty:
        await review(world, agent_id, "p1", True)
    assert empty.value.violation_type == "NO_PENDING_APPROVAL"
    await send(world, agent_id, "Hi")
    with pytest.raises(FailedPreconditionError) as answered:
        await review(world, agent_id, "p1", False)
    assert answered.value.violation_type == "NO_PENDING_APPROVAL"


async def test_a_review_on_a_busy_agent_is_refused(world: World) -> None:
    world.fake.script(
        Reply(tool_calls=[ToolCall("conversation_search", {"query": "cats"}, id="p1")]),
        Reply(text="Slowly.", delay=0.5),
    )
    agent_id = await paused_agent(world)

    first = world.service.submit_approval(world.caller, agent_id, "p1", True)
    started = await anext(first)
    assert isinstance(started.event, RunStarted)
    with pytest.raises(FailedPreconditionError) as busy:
        await review(world, agent_id, "p1", True)
    assert busy.value.violation_type == "AGENT_BUSY"
    other_process = MessageService(world.database, world.service.providers)
    with pytest.raises(FailedPreconditionError) as elsewhere:
        await anext(other_process.submit_approval(world.caller, agent_id, "p1", True))
    assert elsewhere.value.violation_type == "AGENT_BUSY"
    rest = [event async for event in first]
    assert finished([started, *rest]).stop_reason is StopReason.END_TURN
