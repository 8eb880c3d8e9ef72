"""The turn loop against the fake provider through the real OpenAI SDK: both contracts, rules."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from engram.adapters.llm.chat import ChatMessage, Role, ToolSpec
from engram.adapters.llm.chat import ToolCall as ChatToolCall
from engram.adapters.llm.errors import ProviderTimeoutError
from engram.adapters.llm.openai_chat import OpenAIChatProvider, OpenAIChatSettings
from engram.services.base_tools import BASE_TOOLS
from engram.services.runtime.core_memory import CoreMemory, MemoryBlockState
from engram.services.runtime.tool_rule_solver import ToolRuleSolver
from engram.services.runtime.turn import (
    DENIED_NOTICE,
    HEARTBEAT_ARGUMENT,
    NO_TOOL_CALL_NOTICE,
    ApprovalRequestEvent,
    AssistantEvent,
    LoopContract,
    PendingDecision,
    ReasoningEvent,
    RuntimeTool,
    StepFinished,
    StepStarted,
    StopReason,
    ToolCallEvent,
    ToolOutcome,
    ToolReturnEvent,
    Turn,
    TurnEvent,
    TurnFinished,
    TurnSettings,
    run_turn,
)
from support.fake_provider import FakeProvider, Reply, ToolCall

ROLL = ToolSpec(
    "roll_die",
    "Roll a die.",
    {"type": "object", "properties": {"sides": {"type": "integer"}}, "required": ["sides"]},
)


def base(name: str) -> RuntimeTool:
    tool = BASE_TOOLS[name]
    return RuntimeTool(ToolSpec(tool.name, tool.description, tool.parameters))


def make_turn(
    fake_provider: FakeProvider,
    contract: LoopContract,
    *,
    tools: Sequence[RuntimeTool] = (),
    rules: Sequence[Mapping[str, Any]] = (),
    max_steps: int = 10,
    stream_tokens: bool = False,
    cancel_after: int | None = None,
    custom_results: dict[str, str] | None = None,
    deadline: float | None = None,
) -> Turn:
    provider = OpenAIChatProvider(
        OpenAIChatSettings(
            name="openai", api_key="k", base_url=fake_provider.openai_base_url, max_retries=0
        )
    )
    memory = CoreMemory(
        [
            MemoryBlockState("human", "Name: Ada", limit=100),
            MemoryBlockState("persona", "Helpful.", read_only=True),
        ]
    )
    calls_seen: list[str] = []

    async def run_tool(name: str, arguments: Mapping[str, Any]) -> ToolOutcome:
        calls_seen.append(name)
        return ToolOutcome((custom_results or {}).get(name, f"{name} ran with {dict(arguments)}"))

    steps_started = 0

    def cancelled() -> bool:
        return cancel_after is not None and steps_started >= cancel_after

    turn = Turn(
        settings=TurnSettings(
            model="gpt-test",
            contract=contract,
            max_steps=max_steps,
            stream_tokens=stream_tokens,
            deadline=deadline,
        ),
        provider=provider,
        tools=list(tools),
        memory=memory,
        solver=ToolRuleSolver.from_rules(list(rules)),
        run_tool=run_tool,
        history=[ChatMessage(Role.SYSTEM, "Be brief."), ChatMessage(Role.USER, "Hi")],
        cancelled=cancelled,
    )

    original = turn.append

    def counting_append(message: ChatMessage) -> None:
        nonlocal steps_started
        if message.role is Role.ASSISTANT:
            steps_started += 1
        original(message)

    turn.append = counting_append  # type: ignore[method-assign]
    return turn


async def events_of(turn: Turn) -> list[TurnEvent]:
    """The turn's events, their message ids blanked once checked (they are random).

    Every id an event carries must be one of a message the turn wrote.
    """
    events = [event async for event in run_turn(turn)]
    await turn.provider.close()
    written = {message.id for message in turn.new_messages}
    shown = [event.message_id for event in events if hasattr(event, "message_id")]
    assert all(message_id in written for message_id in shown)
    return [replace(e, message_id="") if hasattr(e, "message_id") else e for e in events]


def finished(events: Sequence[TurnEvent]) -> TurnFinished:
    last = events[-1]
    assert isinstance(last, TurnFinished)
    return last


def bodies(fake_provider: FakeProvider) -> list[dict[str, Any]]:
    return [r.body for r in fake_provider.requests if r.body is not None]


# --- native contract -----------------------------------------------------------------


async def test_native_plain_answer_ends_the_turn(fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(text="Hello, Ada.", prompt_tokens=7, completion_tokens=3))
    turn = make_turn(fake_provider, LoopContract.NATIVE, tools=[base("memory_insert")])
    events = await events_of(turn)

    assert [type(e) for e in events] == [StepStarted, StepFinished, AssistantEvent, TurnFinished]
    assert events[2] == AssistantEvent("Hello, Ada.")
    done = finished(events)
    assert (done.stop_reason, done.steps, done.prompt_tokens) == (StopReason.END_TURN, 1, 7)
    assert [m.role for m in turn.new_messages] == [Role.ASSISTANT]
    # Native agents get no heartbeat flag and no forced tool choice.
    sent = bodies(fake_provider)[0]
    assert sent["tool_choice"] == "auto"
    assert HEARTBEAT_ARGUMENT not in sent["tools"][0]["function"]["parameters"]["properties"]


async def test_native_tool_call_continues_and_edits_memory(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        Reply(
            tool_calls=[
                ToolCall("memory_insert", {"label": "human", "new_string": "Likes tea."}, id="c1")
            ]
        ),
        Reply(text="Noted."),
    )
    turn = make_turn(fake_provider, LoopContract.NATIVE, tools=[base("memory_insert")])
    events = await events_of(turn)

    returns = [e for e in events if isinstance(e, ToolReturnEvent)]
    assert len(returns) == 1 and returns[0].ok and returns[0].call_id == "c1"
    block = turn.memory.get("human")
    assert block is not None and block.value == "Name: Ada\nLikes tea."
    assert turn.memory.changed_labels() == ("human",)
    assert finished(events).stop_reason is StopReason.END_TURN
    assert [m.role for m in turn.new_messages] == [Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    # The second request carries the call and its packaged result.
    second = bodies(fake_provider)[1]["messages"]
    assert second[-1]["role"] == "tool" and json.loads(second[-1]["content"])["status"] == "ok"


async def test_a_memory_error_goes_back_to_the_model(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        Reply(tool_calls=[ToolCall("memory_insert", {"label": "persona", "new_string": "x"})]),
        Reply(text="I cannot change that."),
    )
    turn = make_turn(fake_provider, LoopContract.NATIVE, tools=[base("memory_insert")])
    events = await events_of(turn)
    result = next(e for e in events if isinstance(e, ToolReturnEvent))
    assert not result.ok and "read-only" in result.text.lower()
    assert finished(events).stop_reason is StopReason.END_TURN


async def test_max_steps_stops_a_model_that_never_finishes(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        *[Reply(tool_calls=[ToolCall("roll_die", {"sides": 6})]) for _ in range(3)]
    )
    turn = make_turn(fake_provider, LoopContract.NATIVE, tools=[RuntimeTool(ROLL)], max_steps=3)
    events = await events_of(turn)
    done = finished(events)
    assert (done.stop_reason, done.steps) == (StopReason.MAX_STEPS, 3)


async def test_long_results_are_cut_to_the_tools_limit(fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(tool_calls=[ToolCall("roll_die", {"sides": 6})]), Reply(text="ok"))
    turn = make_turn(
        fake_provider,
        LoopContract.NATIVE,
        tools=[RuntimeTool(ROLL, return_char_limit=10)],
        custom_results={"roll_die": "x" * 100},
    )
    await events_of(turn)
    packaged = json.loads(turn.new_messages[1].content)
    assert packaged["result"] == "x" * 10 + "... [cut to 10 characters]"


async def test_cancellation_is_checked_between_steps(fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(tool_calls=[ToolCall("roll_die", {"sides": 6})]))
    turn = make_turn(fake_provider, LoopContract.NATIVE, tools=[RuntimeTool(ROLL)], cancel_after=1)
    events = await events_of(turn)
    assert finished(events).stop_reason is StopReason.CANCELLED
    assert len(fake_provider.requests) == 1


async def test_token_streaming_sends_pieces(fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(text="A longer answer in pieces.", reasoning="Think."))
    turn = make_turn(fake_provider, LoopContract.NATIVE, stream_tokens=True)
    events = await events_of(turn)
    pieces = [e.text for e in events if isinstance(e, AssistantEvent)]
    assert len(pieces) > 1 and "".join(pieces) == "A longer answer in pieces."
    assert all(e.delta for e in events if isinstance(e, AssistantEvent))
    assert "".join(e.text for e in events if isinstance(e, ReasoningEvent)) == "Think."


# --- heartbeat contract --------------------------------------------------------------


async def test_heartbeat_agents_speak_through_send_message(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        Reply(
            tool_calls=[ToolCall("send_message", {"message": "Hi Ada!", HEARTBEAT_ARGUMENT: False})]
        )
    )
    turn = make_turn(
        fake_provider, LoopContract.HEARTBEAT, tools=[base("send_message"), base("memory_insert")]
    )
    events = await events_of(turn)
    assert AssistantEvent("Hi Ada!") in events
    assert finished(events).stop_reason is StopReason.END_TURN
    sent = bodies(fake_provider)[0]
    parameters = sent["tools"][0]["function"]["parameters"]
    assert HEARTBEAT_ARGUMENT in parameters["required"]
    assert sent["tool_choice"] == "required"


async def test_plain_text_is_an_error_the_agent_is_told(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        Reply(text="Hello there."),
        Reply(
            tool_calls=[ToolCall("send_message", {"message": "Hello!", HEARTBEAT_ARGUMENT: False})]
        ),
    )
    turn = make_turn(fake_provider, LoopContract.HEARTBEAT, tools=[base("send_message")])
    events = await events_of(turn)
    # The plain text never reached the user; the model was told and answered properly.
    assert [e.text for e in events if isinstance(e, AssistantEvent)] == ["Hello!"]
    assert bodies(fake_provider)[1]["messages"][-1] == {
        "role": "user",
        "content": NO_TOOL_CALL_NOTICE,
    }
    assert finished(events).steps == 2


async def test_a_heartbeat_request_continues_the_loop(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        Reply(tool_calls=[ToolCall("roll_die", {"sides": 20, HEARTBEAT_ARGUMENT: True})]),
        Reply(
            tool_calls=[
                ToolCall("send_message", {"message": "You rolled.", HEARTBEAT_ARGUMENT: False})
            ]
        ),
    )
    turn = make_turn(
        fake_provider, LoopContract.HEARTBEAT, tools=[RuntimeTool(ROLL), base("send_message")]
    )
    events = await events_of(turn)
    assert finished(events).steps == 2
    # The custom tool never sees the heartbeat flag.
    result = next(e for e in events if isinstance(e, ToolReturnEvent))
    assert result.text == "roll_die ran with {'sides': 20}"


# --- rules ---------------------------------------------------------------------------


async def test_an_init_rule_forces_the_first_call(fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(tool_calls=[ToolCall("roll_die", {"sides": 6})]), Reply(text="6"))
    turn = make_turn(
        fake_provider,
        LoopContract.NATIVE,
        tools=[RuntimeTool(ROLL), base("memory_insert")],
        rules=[{"init": {"tool_name": "roll_die"}}],
    )
    await events_of(turn)
    first, second = bodies(fake_provider)
    assert first["tool_choice"] == {"type": "function", "function": {"name": "roll_die"}}
    assert [t["function"]["name"] for t in first["tools"]] == ["roll_die"]
    assert second["tool_choice"] == "auto"
    assert "parallel_tool_calls" in first and first["parallel_tool_calls"] is False


async def test_a_terminal_tool_ends_the_turn(fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(tool_calls=[ToolCall("roll_die", {"sides": 6})]))
    turn = make_turn(
        fake_provider,
        LoopContract.NATIVE,
        tools=[RuntimeTool(ROLL)],
        rules=[{"terminal": {"tool_name": "roll_die"}}],
    )
    events = await events_of(turn)
    assert finished(events).stop_reason is StopReason.TOOL_RULE
    assert len(fake_provider.requests) == 1


async def test_a_call_outside_the_rules_is_refused(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        Reply(tool_calls=[ToolCall("memory_insert", {"label": "human", "new_string": "x"})]),
        Reply(text="ok"),
    )
    turn = make_turn(
        fake_provider,
        LoopContract.NATIVE,
        tools=[RuntimeTool(ROLL), base("memory_insert")],
        rules=[{"init": {"tool_name": "roll_die"}}],
    )
    events = await events_of(turn)
    refused = next(e for e in events if isinstance(e, ToolReturnEvent))
    assert not refused.ok and "roll_die" in refused.text
    assert turn.memory.changed_labels() == ()


async def test_approval_pauses_the_turn_before_the_tool_runs(fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(tool_calls=[ToolCall("roll_die", {"sides": 6}, id="c9")]))
    turn = make_turn(
        fake_provider,
        LoopContract.NATIVE,
        tools=[RuntimeTool(ROLL)],
        rules=[{"requires_approval": {"tool_name": "roll_die"}}],
    )
    events = await events_of(turn)
    assert [type(e) for e in events[-3:]] == [ToolCallEvent, ApprovalRequestEvent, TurnFinished]
    assert finished(events).stop_reason is StopReason.REQUIRES_APPROVAL
    assert not any(isinstance(e, ToolReturnEvent) for e in events)


def resuming(turn: Turn, call: ChatToolCall, *, approve: bool, reason: str = "") -> Turn:
    """The turn as the one after an approval stop: the paused call is the last message."""
    turn.history.append(ChatMessage(Role.ASSISTANT, "", tool_calls=(call,)))
    turn.resume = PendingDecision(call, approve, reason)
    return turn


async def test_an_approved_call_runs_first_and_the_turn_continues(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script(Reply(text="You rolled a 4."))
    call = ChatToolCall("c9", "roll_die", json.dumps({"sides": 6}))
    turn = resuming(
        make_turn(
            fake_provider,
            LoopContract.NATIVE,
            tools=[RuntimeTool(ROLL)],
            rules=[{"requires_approval": {"tool_name": "roll_die"}}],
        ),
        call,
        approve=True,
    )
    events = await events_of(turn)
    assert events[0] == ToolReturnEvent("c9", "roll_die", "roll_die ran with {'sides': 6}", True)
    assert isinstance(events[1], StepStarted)
    assert AssistantEvent("You rolled a 4.") in events
    assert finished(events).stop_reason is StopReason.END_TURN
    assert finished(events).steps == 1
    # The model saw the call answered, and the tool result is among the new messages.
    sent = bodies(fake_provider)[0]["messages"]
    assert sent[-1]["role"] == "tool" and sent[-1]["tool_call_id"] == "c9"
    assert [m.role for m in turn.new_messages] == [Role.TOOL, Role.ASSISTANT]
    assert turn.solver.call_count("roll_die") == 1


async def test_a_denied_call_is_answered_and_the_agent_reacts(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script(
        Reply(
            tool_calls=[
                ToolCall(
                    "send_message", {"message": "Alright, no dice.", HEARTBEAT_ARGUMENT: False}
                )
            ]
        )
    )
    call = ChatToolCall("c9", "roll_die", json.dumps({"sides": 6, HEARTBEAT_ARGUMENT: False}))
    turn = resuming(
        make_turn(
            fake_provider,
            LoopContract.HEARTBEAT,
            tools=[RuntimeTool(ROLL), base("send_message")],
            rules=[{"requires_approval": {"tool_name": "roll_die"}}],
        ),
        call,
        approve=False,
        reason="not now",
    )
    events = await events_of(turn)
    denied = events[0]
    assert isinstance(denied, ToolReturnEvent)
    assert denied.call_id == "c9" and not denied.ok and "not now" in denied.text
    assert AssistantEvent("Alright, no dice.") in events
    assert finished(events).stop_reason is StopReason.END_TURN
    # The tool never ran, and the heartbeat model was told why it gets a step.
    assert turn.solver.call_count("roll_die") == 0
    sent = bodies(fake_provider)[0]["messages"]
    assert sent[-2]["role"] == "tool" and "not now" in sent[-2]["content"]
    assert sent[-1] == {"role": "user", "content": DENIED_NOTICE}


async def test_the_callers_deadline_bounds_the_provider_call(fake_provider: FakeProvider) -> None:
    # The fake would answer after 5 s; the caller's deadline is 0.5 s away, so the call
    # is cut short instead of outliving the client that waits for it.
    fake_provider.script(Reply(text="too late", delay=5))
    turn = make_turn(fake_provider, LoopContract.NATIVE, deadline=time.monotonic() + 0.5)
    with pytest.raises(ProviderTimeoutError):
        await events_of(turn)
    await turn.provider.close()
    body = fake_provider.requests[0].body
    assert body is not None and body["model"] == "gpt-test"
