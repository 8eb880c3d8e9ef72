"""Step and token streaming through the running server, on both SDKs and both engines.

The fake provider streams text, reasoning and tool-call arguments in many
small pieces; these tests check what a client sees of them: the order of
events, the message id the pieces share (the id ListMessages returns), that
joined pieces are the whole message, and that coalescing merges pieces
without losing any.  Coalescing is checked by counting events under a window
far longer than any test takes, never by timing.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence

import pytest

from engram.adapters.llm.anthropic_messages import AnthropicProvider, AnthropicSettings
from engram.adapters.llm.openai_chat import OpenAIChatProvider, OpenAIChatSettings
from engram.adapters.llm.registry import ProviderRegistry
from engram.config.settings import Settings
from engram.store.database import Database
from engram.v1 import agent_pb2, agent_service_pb2, message_pb2, message_service_pb2
from support.api import ApiHarness, Client, running_api
from support.fake_provider import FakeProvider, Reply, ToolCall

TurnEvent = message_service_pb2.TurnEvent
MODELS = {"openai": "openai/gpt-test", "anthropic": "anthropic/claude-test"}
# A window no test comes near, so that what is merged does not depend on timing.
FOREVER_MS = 600_000
PIECES = ("reasoning", "assistant_message", "tool_call_delta")


def fake_providers(fake: FakeProvider) -> ProviderRegistry:
    """Both SDKs, pointed at the fake provider, without retries."""
    return ProviderRegistry(
        {
            "openai": OpenAIChatProvider(
                OpenAIChatSettings("openai", "k", fake.openai_base_url, max_retries=0)
            ),
            "anthropic": AnthropicProvider(
                AnthropicSettings("anthropic", "k", fake.anthropic_base_url, max_retries=0)
            ),
        }
    )


async def serve(
    settings: Settings, database: Database, fake: FakeProvider, coalesce_ms: int
) -> AsyncIterator[ApiHarness]:
    registry = fake_providers(fake)
    configured = settings.model_copy(
        update={"stream_ping_interval_seconds": 30.0, "stream_coalesce_ms": coalesce_ms}
    )
    try:
        async with running_api(configured, database, registry) as harness:
            yield harness
    finally:
        await registry.close()


@pytest.fixture
async def server(
    settings: Settings, database: Database, fake_provider: FakeProvider
) -> AsyncIterator[ApiHarness]:
    """Coalescing off: every provider piece is an event."""
    async for harness in serve(settings, database, fake_provider, 0):
        yield harness


@pytest.fixture
async def coalescing_server(
    settings: Settings, database: Database, fake_provider: FakeProvider
) -> AsyncIterator[ApiHarness]:
    async for harness in serve(settings, database, fake_provider, FOREVER_MS):
        yield harness


@pytest.fixture(params=["openai", "anthropic"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def new_agent(client: Client, api: str, agent_type: int = agent_pb2.AGENT_TYPE_NATIVE) -> str:
    agent = await client.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(display_name="pal", model=MODELS[api], agent_type=agent_type)
        )
    )
    return str(agent.name)


async def stream(client: Client, agent: str, *, stream_tokens: bool) -> list[TurnEvent]:
    call = client.messages.StreamMessage(
        message_service_pb2.StreamMessageRequest(
            agent=agent, text="Go", stream_tokens=stream_tokens
        )
    )
    return [event async for event in call]


async def stored(client: Client, agent: str) -> list[message_pb2.Message]:
    page = await client.messages.ListMessages(
        message_service_pb2.ListMessagesRequest(parent=agent, page_size=100)
    )
    return list(page.messages)


def kind(event: TurnEvent) -> str:
    return str(event.WhichOneof("event"))


def runs_of_kinds(events: Sequence[TurnEvent]) -> list[str]:
    """The kinds in order, with repeats of one kind in a row counted once."""
    return [name for name, _ in itertools.groupby(kind(event) for event in events)]


def assert_well_formed(events: Sequence[TurnEvent]) -> None:
    """Numbered from 1 without gaps, one run on every event, stop reason then usage last."""
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    runs = {event.run for event in events}
    assert len(runs) == 1 and runs.pop().startswith("runs/")
    assert [kind(event) for event in events[-2:]] == ["stop_reason", "usage"]
    assert all(not event.message_id for event in events[-2:])
    assert all(event.message_id for event in events[:-2])


def joined(events: Sequence[TurnEvent], name: str) -> str:
    return "".join(getattr(event, name).text for event in events if kind(event) == name)


def arguments_by_call(events: Sequence[TurnEvent]) -> dict[str, str]:
    """Each call's joined argument pieces, by call id."""
    pieces: dict[str, list[str]] = defaultdict(list)
    for event in events:
        if kind(event) == "tool_call_delta":
            pieces[event.tool_call_delta.call_id].append(event.tool_call_delta.arguments_delta)
    return {call_id: "".join(parts) for call_id, parts in pieces.items()}


MEMORY_CALL = ToolCall("memory_insert", {"label": "human", "new_string": "Likes tea."}, id="c1")
THINKING = "First I note what the user likes, then I answer."
ANSWER = "Noted: you like tea. Anything else I should remember?"


def tool_then_answer() -> tuple[Reply, Reply]:
    return (
        Reply(reasoning=THINKING, text="Let me note that.", tool_calls=[MEMORY_CALL]),
        Reply(text=ANSWER),
    )


async def test_step_streaming_sends_whole_messages(
    server: ApiHarness, fake_provider: FakeProvider, api: str
) -> None:
    agent = await new_agent(server.org_a, api)
    fake_provider.script(*tool_then_answer())
    events = await stream(server.org_a, agent, stream_tokens=False)
    assert_well_formed(events)
    assert [kind(event) for event in events] == [
        "reasoning",
        "tool_call",
        "tool_return",
        "assistant_message",
        "stop_reason",
        "usage",
    ]
    assert [event.step for event in events] == [1, 1, 1, 2, 0, 0]
    assert events[0].reasoning.text == THINKING
    assert events[3].assistant_message.text == ANSWER
    # Each event names the stored message it shows.
    messages = {message.id: message for message in await stored(server.org_a, agent)}
    first, call, result, answer = (messages[event.message_id] for event in events[:4])
    assert first is call and first.reasoning == THINKING and first.tool_calls[0].id == "c1"
    assert result.role == message_pb2.MESSAGE_ROLE_TOOL and result.tool_call_id == "c1"
    assert answer.text == ANSWER


async def test_token_streaming_sends_pieces_then_the_boundary_events(
    server: ApiHarness, fake_provider: FakeProvider, api: str
) -> None:
    agent = await new_agent(server.org_a, api)
    fake_provider.script(*tool_then_answer())
    events = await stream(server.org_a, agent, stream_tokens=True)
    assert_well_formed(events)
    assert runs_of_kinds(events) == [
        "reasoning",
        "assistant_message",
        "tool_call_delta",
        "tool_call",
        "tool_return",
        "assistant_message",
        "stop_reason",
        "usage",
    ]
    # Coalescing is off, so every piece the provider sent is an event of its own.
    assert sum(kind(event) == "reasoning" for event in events) > 1
    assert sum(kind(event) == "tool_call_delta" for event in events) > 2

    step_one = [event for event in events if event.step == 1]
    step_two = [event for event in events if event.step == 2]
    messages = {message.id: message for message in await stored(server.org_a, agent)}
    # Every piece of the first answer, and its whole tool call, names one message...
    first_ids = {event.message_id for event in step_one if kind(event) != "tool_return"}
    assert len(first_ids) == 1
    first = messages[first_ids.pop()]
    # ... and the pieces, joined, are what was stored.
    assert joined(step_one, "reasoning") == first.reasoning == THINKING
    assert joined(step_one, "assistant_message") == first.text == "Let me note that."
    whole_call = next(event.tool_call for event in step_one if kind(event) == "tool_call")
    assert arguments_by_call(step_one) == {"c1": whole_call.arguments}
    assert first.tool_calls[0].arguments == whole_call.arguments
    assert json.loads(whole_call.arguments) == {"label": "human", "new_string": "Likes tea."}
    tool_pieces = [event.tool_call_delta for event in step_one if kind(event) == "tool_call_delta"]
    assert tool_pieces[0].name == "memory_insert" and not any(p.name for p in tool_pieces[1:])
    assert {piece.index for piece in tool_pieces} == {0}

    answer_ids = {event.message_id for event in step_two}
    assert len(answer_ids) == 1 and answer_ids != {first.id}
    assert joined(step_two, "assistant_message") == messages[answer_ids.pop()].text == ANSWER


async def test_coalescing_merges_tiny_pieces(
    coalescing_server: ApiHarness, fake_provider: FakeProvider, api: str
) -> None:
    agent = await new_agent(coalescing_server.org_a, api)
    text = "".join(chr(ord("a") + i % 26) for i in range(200))
    fake_provider.script(Reply(text=text, piece_chars=1))
    events = await stream(coalescing_server.org_a, agent, stream_tokens=True)
    assert_well_formed(events)
    pieces = [event for event in events if kind(event) == "assistant_message"]
    # The first piece goes out at once; the other 199 wait for the answer's end.
    assert [len(event.assistant_message.text) for event in pieces] == [1, 199]
    assert joined(events, "assistant_message") == text
    assert len({event.message_id for event in pieces}) == 1


async def test_without_coalescing_every_tiny_piece_is_an_event(
    server: ApiHarness, fake_provider: FakeProvider, api: str
) -> None:
    agent = await new_agent(server.org_a, api)
    text = "".join(chr(ord("a") + i % 26) for i in range(200))
    fake_provider.script(Reply(text=text, piece_chars=1))
    events = await stream(server.org_a, agent, stream_tokens=True)
    assert_well_formed(events)
    pieces = [event for event in events if kind(event) == "assistant_message"]
    assert len(pieces) == 200
    assert joined(events, "assistant_message") == text


PARALLEL_CALLS = [
    ToolCall("memory_insert", {"label": "human", "new_string": "Likes tea."}, id="p1"),
    ToolCall("memory_insert", {"label": "human", "new_string": "Has a cat."}, id="p2"),
]


async def test_parallel_calls_with_interleaved_pieces_are_told_apart(
    server: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(server.org_a, "openai")
    fake_provider.script(
        Reply(tool_calls=PARALLEL_CALLS, interleave_tool_calls=True), Reply(text="Both noted.")
    )
    events = await stream(server.org_a, agent, stream_tokens=True)
    assert_well_formed(events)
    assert runs_of_kinds(events)[:3] == ["tool_call_delta", "tool_call", "tool_return"]
    pieces = [event for event in events if kind(event) == "tool_call_delta"]
    indexes = [event.tool_call_delta.index for event in pieces]
    assert indexes[:4] == [0, 1, 0, 1]  # they really alternate
    assert {event.tool_call_delta.call_id for event in pieces} == {"p1", "p2"}
    assert all(
        event.tool_call_delta.call_id == ("p1", "p2")[event.tool_call_delta.index]
        for event in pieces
    )
    names = [
        (e.tool_call_delta.index, e.tool_call_delta.name) for e in pieces if e.tool_call_delta.name
    ]
    assert names == [(0, "memory_insert"), (1, "memory_insert")]
    whole = {e.tool_call.call_id: e.tool_call.arguments for e in events if kind(e) == "tool_call"}
    assert arguments_by_call(events) == whole
    assert whole["p2"] == '{"label":"human","new_string":"Has a cat."}'
    messages = {message.id: message for message in await stored(server.org_a, agent)}
    (message_id,) = {event.message_id for event in pieces}
    assert [call.id for call in messages[message_id].tool_calls] == ["p1", "p2"]


async def test_coalesced_parallel_calls_keep_each_call_whole(
    coalescing_server: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(coalescing_server.org_a, "openai")
    fake_provider.script(
        Reply(tool_calls=PARALLEL_CALLS, interleave_tool_calls=True, piece_chars=1),
        Reply(text="Both noted."),
    )
    events = await stream(coalescing_server.org_a, agent, stream_tokens=True)
    assert_well_formed(events)
    pieces = [event.tool_call_delta for event in events if kind(event) == "tool_call_delta"]
    # The header of the first call goes out at once; the rest is one piece per call, in
    # the order the calls' held pieces began (the second call's header came next).
    assert [(piece.index, bool(piece.name)) for piece in pieces] == [
        (0, True),
        (1, True),
        (0, False),
    ]
    whole = {e.tool_call.call_id: e.tool_call.arguments for e in events if kind(e) == "tool_call"}
    assert arguments_by_call(events) == whole


async def test_anthropic_tool_use_arguments_stream_in_pieces(
    server: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(server.org_a, "anthropic")
    fake_provider.script(Reply(tool_calls=PARALLEL_CALLS), Reply(text="Both noted."))
    events = await stream(server.org_a, agent, stream_tokens=True)
    assert_well_formed(events)
    assert runs_of_kinds(events) == [
        "tool_call_delta",
        "tool_call",
        "tool_return",
        "tool_call",
        "tool_return",
        "assistant_message",
        "stop_reason",
        "usage",
    ]
    pieces = [event.tool_call_delta for event in events if kind(event) == "tool_call_delta"]
    assert [piece.index for piece in pieces] == sorted(piece.index for piece in pieces)
    assert sum(piece.index == 1 for piece in pieces) > 2
    whole = {e.tool_call.call_id: e.tool_call.arguments for e in events if kind(e) == "tool_call"}
    assert arguments_by_call(events) == whole
    assert whole["p1"] == '{"label": "human", "new_string": "Likes tea."}'


async def test_hidden_reasoning_takes_its_place_among_the_pieces(
    server: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(server.org_a, "anthropic")
    reply = Reply(reasoning="Visible thoughts.", redacted_reasoning="b3BhcXVl", text="Hello there.")
    fake_provider.script(reply)
    events = await stream(server.org_a, agent, stream_tokens=True)
    assert_well_formed(events)
    assert runs_of_kinds(events) == [
        "reasoning",
        "hidden_reasoning",
        "assistant_message",
        "stop_reason",
        "usage",
    ]
    assert len({event.message_id for event in events[:-2]}) == 1
    assert joined(events, "reasoning") == "Visible thoughts."

    fake_provider.script(reply)
    whole = await stream(server.org_a, agent, stream_tokens=False)
    assert [kind(event) for event in whole] == [
        "hidden_reasoning",
        "reasoning",
        "assistant_message",
        "stop_reason",
        "usage",
    ]
    # The hidden reasoning is kept, to be sent back to the provider next time.
    sent_back = fake_provider.last_request.body["messages"]
    assert {"type": "redacted_thinking", "data": "b3BhcXVl"} in sent_back[1]["content"]


async def test_a_heartbeat_agent_streams_its_words_as_send_message_arguments(
    server: ApiHarness, fake_provider: FakeProvider, api: str
) -> None:
    agent = await new_agent(server.org_a, api, agent_pb2.AGENT_TYPE_HEARTBEAT)
    words = {"message": "Hi Ada, nice to meet you!", "request_heartbeat": False}
    # Plain text from a heartbeat model is not for the user, so it is not streamed.
    fake_provider.script(
        Reply(text="(thinking aloud)", tool_calls=[ToolCall("send_message", words, id="s1")])
    )
    events = await stream(server.org_a, agent, stream_tokens=True)
    assert_well_formed(events)
    assert runs_of_kinds(events) == [
        "tool_call_delta",
        "tool_call",
        "assistant_message",
        "tool_return",
        "stop_reason",
        "usage",
    ]
    said = next(event for event in events if kind(event) == "assistant_message")
    assert said.assistant_message.text == "Hi Ada, nice to meet you!"
    assert json.loads(arguments_by_call(events)["s1"]) == words
    # The words belong to the message that called send_message.
    pieces = [event for event in events if kind(event) == "tool_call_delta"]
    assert {event.message_id for event in pieces} == {said.message_id}
    messages = {message.id: message for message in await stored(server.org_a, agent)}
    assert [call.id for call in messages[said.message_id].tool_calls] == ["s1"]
