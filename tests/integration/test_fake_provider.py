"""The fake LLM provider is only useful if the real SDKs accept it, so every test talks over HTTP.

Each test drives ``openai.AsyncOpenAI`` or ``anthropic.AsyncAnthropic`` against a
running ``FakeProvider`` and checks what the SDK parsed, so adapters later
tested against the fake see exactly what they would see from the real APIs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import openai
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import RawMessageStreamEvent
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk

from support.fake_provider import (
    RAW_ARGUMENTS_KEY,
    ErrorReply,
    FakeProvider,
    Reply,
    ToolCall,
    signature_for,
    start_fake_provider,
)

CLAUDE = "claude-test-model"  # not on the SDK's deprecated-model list, which warns
USER: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_ARGS = {"city": "Paris", "unit": "celsius", "days": 3}
TIME_ARGS = {"timezone": "Europe/Paris"}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
OPENAI_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather by city", "parameters": SCHEMA},
}
ANTHROPIC_TOOL: Any = {
    "name": "get_weather",
    "description": "Weather by city",
    "input_schema": SCHEMA,
}
PARALLEL = (
    ToolCall("get_weather", WEATHER_ARGS),
    ToolCall("get_time", TIME_ARGS, id="fixed_id_1"),
)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx honours proxy variables; a developer's proxy must not swallow 127.0.0.1."""
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as running:
        yield running
        assert running.server_errors == []


@pytest.fixture
async def openai_client(provider: FakeProvider) -> AsyncIterator[AsyncOpenAI]:
    async with make_openai(provider) as client:
        yield client


@pytest.fixture
async def anthropic_client(provider: FakeProvider) -> AsyncIterator[AsyncAnthropic]:
    async with make_anthropic(provider) as client:
        yield client


def make_openai(provider: FakeProvider, **options: Any) -> AsyncOpenAI:
    options.setdefault("max_retries", 0)
    return AsyncOpenAI(api_key="test", base_url=provider.openai_base_url, **options)


def make_anthropic(provider: FakeProvider, **options: Any) -> AsyncAnthropic:
    options.setdefault("max_retries", 0)
    return AsyncAnthropic(api_key="test", base_url=provider.anthropic_base_url, **options)


async def openai_chunks(client: AsyncOpenAI, **options: Any) -> list[ChatCompletionChunk]:
    """All chunks of a streamed chat completion."""
    options.setdefault("messages", USER)
    stream = await client.chat.completions.create(model="gpt-4o-mini", stream=True, **options)
    return [chunk async for chunk in stream]


async def anthropic_events(client: AsyncAnthropic, **options: Any) -> list[RawMessageStreamEvent]:
    """All events of a raw (``stream=True``) Messages stream."""
    options.setdefault("messages", USER)
    options.setdefault("max_tokens", 1024)
    stream = await client.messages.create(model=CLAUDE, stream=True, **options)
    return [event async for event in stream]


def openai_deltas(chunks: list[ChatCompletionChunk]) -> list[Any]:
    return [chunk.choices[0].delta for chunk in chunks if chunk.choices]


def streamed_tool_calls(chunks: list[ChatCompletionChunk]) -> dict[int, dict[str, Any]]:
    """Tool calls reassembled by index, as an adapter would, keeping the fragment count."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in openai_deltas(chunks):
        for part in delta.tool_calls or []:
            call = calls.setdefault(
                part.index, {"id": None, "name": None, "args": [], "type": None}
            )
            call["id"] = call["id"] or part.id
            call["type"] = call["type"] or part.type
            assert part.function is not None
            call["name"] = call["name"] or part.function.name
            call["args"].append(part.function.arguments or "")
    return calls


def id_matches(scripted: ToolCall, received: str, prefix: str) -> bool:
    """A scripted id is sent as is; a missing one is generated with the API's prefix."""
    return received == scripted.id if scripted.id else received.startswith(prefix)


def block_deltas(events: list[RawMessageStreamEvent], index: int) -> list[Any]:
    return [e.delta for e in events if e.type == "content_block_delta" and e.index == index]


# --------------------------------------------------------------------------- text


async def test_openai_text_reply(provider: FakeProvider, openai_client: AsyncOpenAI) -> None:
    provider.script(Reply(text="Sunny and mild."))
    completion = await openai_client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    message = completion.choices[0].message
    assert (message.role, message.content, message.tool_calls) == (
        "assistant",
        "Sunny and mild.",
        None,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.total_tokens) == (10, 15)


async def test_anthropic_text_reply(
    provider: FakeProvider, anthropic_client: AsyncAnthropic
) -> None:
    provider.script(Reply(text="Sunny and mild."))
    message = await anthropic_client.messages.create(model=CLAUDE, max_tokens=1024, messages=USER)
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == (
        "message",
        "assistant",
        CLAUDE,
    )
    assert [(block.type, getattr(block, "text", None)) for block in message.content] == [
        ("text", "Sunny and mild.")
    ]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 5)


async def test_openai_stream_reassembles_text(
    provider: FakeProvider, openai_client: AsyncOpenAI
) -> None:
    provider.script(Reply(text="It is sunny in Paris today."))
    chunks = await openai_chunks(openai_client)
    deltas = openai_deltas(chunks)
    assert deltas[0].role == "assistant"
    pieces = [delta.content for delta in deltas[1:] if delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == "It is sunny in Paris today."
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1


async def test_anthropic_stream_reassembles_text(
    provider: FakeProvider, anthropic_client: AsyncAnthropic
) -> None:
    provider.script(Reply(text="It is sunny in Paris today."))
    events = await anthropic_events(anthropic_client)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    pieces = [delta.text for delta in block_deltas(events, 0)]
    assert len(pieces) > 1
    assert "".join(pieces) == "It is sunny in Paris today."


async def test_streams_on_the_wire(provider: FakeProvider) -> None:
    """Raw SSE framing: OpenAI ``data:`` lines then [DONE]; Anthropic ``event:`` lines, one ping."""
    provider.script(Reply(text="hi"), Reply(text="hi"))
    async with make_openai(provider) as client:
        raw = client.chat.completions.with_streaming_response
        async with raw.create(model="m", messages=USER, stream=True) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert "content-length" not in response.headers
            lines = [line async for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    async with make_anthropic(provider) as client:
        raw_messages = client.messages.with_streaming_response
        async with raw_messages.create(
            model="c", max_tokens=5, messages=USER, stream=True
        ) as reply:
            names = [line async for line in reply.iter_lines() if line.startswith("event: ")]
    assert names[:2] == ["event: message_start", "event: ping"]
    assert names.count("event: ping") == 1
    assert names[-1] == "event: message_stop"


# --------------------------------------------------------------------------- tool calls


@pytest.mark.parametrize("calls", [PARALLEL[:1], PARALLEL], ids=["single", "parallel"])
async def test_openai_tool_calls(
    provider: FakeProvider, openai_client: AsyncOpenAI, calls: tuple[ToolCall, ...]
) -> None:
    provider.script(Reply(tool_calls=calls))
    completion = await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=USER, tools=[OPENAI_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    received = choice.message.tool_calls or []
    assert [(call.type, call.function.name) for call in received] == [  # type: ignore[union-attr]
        ("function", call.name) for call in calls
    ]
    assert [json.loads(call.function.arguments) for call in received] == [  # type: ignore[union-attr]
        call.arguments for call in calls
    ]
    assert all(id_matches(call, got.id, "call_") for call, got in zip(calls, received, strict=True))


@pytest.mark.parametrize("calls", [PARALLEL[:1], PARALLEL], ids=["single", "parallel"])
async def test_openai_streamed_tool_calls(
    provider: FakeProvider, openai_client: AsyncOpenAI, calls: tuple[ToolCall, ...]
) -> None:
    provider.script(Reply(text="Checking.", tool_calls=calls))
    chunks = await openai_chunks(openai_client, tools=[OPENAI_TOOL])
    assembled = streamed_tool_calls(chunks)
    assert sorted(assembled) == list(range(len(calls)))
    for index, call in enumerate(calls):
        got = assembled[index]
        assert (got["name"], got["type"]) == (call.name, "function")
        assert id_matches(call, got["id"], "call_")
        assert got["args"][0] == ""
        assert len(got["args"]) > 2
        assert json.loads("".join(got["args"])) == call.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_anthropic_tool_calls(
    provider: FakeProvider, anthropic_client: AsyncAnthropic
) -> None:
    provider.script(Reply(text="Checking.", tool_calls=PARALLEL))
    message = await anthropic_client.messages.create(
        model=CLAUDE, max_tokens=1024, messages=USER, tools=[ANTHROPIC_TOOL]
    )
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    uses = [block for block in message.content if block.type == "tool_use"]
    assert [(use.name, use.input) for use in uses] == [
        ("get_weather", WEATHER_ARGS),
        ("get_time", TIME_ARGS),
    ]
    assert all(id_matches(call, use.id, "toolu_") for call, use in zip(PARALLEL, uses, strict=True))
    assert message.stop_reason == "tool_use"


async def test_anthropic_streamed_tool_calls(
    provider: FakeProvider, anthropic_client: AsyncAnthropic
) -> None:
    provider.script(Reply(tool_calls=PARALLEL), Reply(tool_calls=PARALLEL))
    events = await anthropic_events(anthropic_client, tools=[ANTHROPIC_TOOL])
    starts = [event for event in events if event.type == "content_block_start"]
    assert [(s.index, s.content_block.type, s.content_block.input) for s in starts] == [  # type: ignore[union-attr]
        (0, "tool_use", {}),
        (1, "tool_use", {}),
    ]
    for index, expected in enumerate((WEATHER_ARGS, TIME_ARGS)):
        pieces = [delta.partial_json for delta in block_deltas(events, index)]
        assert len(pieces) > 2
        assert json.loads("".join(pieces)) == expected
    message_delta = next(event for event in events if event.type == "message_delta")
    assert message_delta.delta.stop_reason == "tool_use"
    # The SDK's own accumulator gives the same inputs.
    async with anthropic_client.messages.stream(
        model=CLAUDE, max_tokens=1024, messages=USER
    ) as stream:
        final = await stream.get_final_message()
    assert [block.input for block in final.content if block.type == "tool_use"] == [
        WEATHER_ARGS,
        TIME_ARGS,
    ]


async def test_malformed_arguments_pass_through(
    provider: FakeProvider, openai_client: AsyncOpenAI, anthropic_client: AsyncAnthropic
) -> None:
    raw = '{"city": "Par'
    call = ToolCall("get_weather", raw)
    provider.script(*[Reply(tool_calls=[call])] * 4)
    completion = await openai_client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.tool_calls[0].function.arguments == raw  # type: ignore[index,union-attr]
    assert "".join(streamed_tool_calls(await openai_chunks(openai_client))[0]["args"]) == raw
    message = await anthropic_client.messages.create(model="c", max_tokens=9, messages=USER)
    assert message.content[0].input == {RAW_ARGUMENTS_KEY: raw}  # type: ignore[union-attr]
    events = await anthropic_events(anthropic_client)
    assert "".join(delta.partial_json for delta in block_deltas(events, 0)) == raw


async def test_anthropic_stream_helper_rejects_malformed_arguments(
    provider: FakeProvider, anthropic_client: AsyncAnthropic
) -> None:
    """SDK quirk: ``messages.stream()`` parses partial_json itself and raises ValueError."""
    provider.script(Reply(tool_calls=[ToolCall("get_weather", "{not json")]))
    with pytest.raises(ValueError, match="Unable to parse tool parameter JSON"):
        async with anthropic_client.messages.stream(model="c", max_tokens=9, messages=USER) as s:
            await s.get_final_message()


# --------------------------------------------------------------------------- reasoning


async def test_openai_reasoning_content(provider: FakeProvider, openai_client: AsyncOpenAI) -> None:
    provider.script(*[Reply(text="Sunny.", reasoning="The user wants weather.")] * 2)
    completion = await openai_client.chat.completions.create(model="deepseek-r1", messages=USER)
    assert completion.choices[0].message.model_extra == {
        "reasoning_content": "The user wants weather."
    }
    deltas = openai_deltas(await openai_chunks(openai_client))
    reasoning = [(d.model_extra or {}).get("reasoning_content") for d in deltas]
    pieces = [piece for piece in reasoning if piece]
    assert len(pieces) > 1
    assert "".join(pieces) == "The user wants weather."
    first_text = next(i for i, d in enumerate(deltas) if d.content)
    assert reasoning.index(pieces[-1]) < first_text


async def test_anthropic_thinking(provider: FakeProvider, anthropic_client: AsyncAnthropic) -> None:
    thought = "The user wants weather."
    provider.script(*[Reply(text="Sunny.", reasoning=thought)] * 3)
    message = await anthropic_client.messages.create(model="c", max_tokens=2048, messages=USER)
    thinking = message.content[0]
    assert thinking.type == "thinking"
    assert (thinking.thinking, thinking.signature) == (thought, signature_for(thought))
    assert message.content[1].type == "text"
    events = await anthropic_events(anthropic_client)
    kinds = [delta.type for delta in block_deltas(events, 0)]
    assert kinds.count("thinking_delta") > 1
    assert kinds[-1] == "signature_delta"
    assert "".join(d.thinking for d in block_deltas(events, 0)[:-1]) == thought
    async with anthropic_client.messages.stream(model="c", max_tokens=9, messages=USER) as stream:
        final = await stream.get_final_message()
    assert final.content[0].type == "thinking"
    assert final.content[0].signature == signature_for(thought)


# --------------------------------------------------------------------------- usage


async def test_openai_usage_chunk_only_when_asked(
    provider: FakeProvider, openai_client: AsyncOpenAI
) -> None:
    provider.script(Reply(text="Sunny.", prompt_tokens=7, completion_tokens=3))
    chunks = await openai_chunks(openai_client, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        7,
        3,
        10,
    )
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


async def test_anthropic_streamed_usage(
    provider: FakeProvider, anthropic_client: AsyncAnthropic
) -> None:
    provider.script(*[Reply(text="Sunny.", prompt_tokens=7, completion_tokens=3)] * 2)
    events = await anthropic_events(anthropic_client)
    assert events[0].type == "message_start"
    assert events[0].message.usage.input_tokens == 7
    assert events[-2].type == "message_delta"
    assert events[-2].usage.output_tokens == 3
    async with anthropic_client.messages.stream(model="c", max_tokens=9, messages=USER) as stream:
        final = await stream.get_final_message()
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 3)


# --------------------------------------------------------------------------- finish reasons


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("forced", "expected"),
    [("length", "length"), ("max_tokens", "length"), ("content_filter", "content_filter")],
)
async def test_openai_forced_finish_reason(
    provider: FakeProvider, openai_client: AsyncOpenAI, forced: str, expected: str, stream: bool
) -> None:
    provider.script(Reply(text="Sunny and", finish_reason=forced))
    if stream:
        reason = (await openai_chunks(openai_client))[-1].choices[0].finish_reason
    else:
        completion = await openai_client.chat.completions.create(model="m", messages=USER)
        reason = completion.choices[0].finish_reason
    assert reason == expected


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("forced", "expected"),
    [("max_tokens", "max_tokens"), ("length", "max_tokens"), ("stop", "end_turn")],
)
async def test_anthropic_forced_stop_reason(
    provider: FakeProvider,
    anthropic_client: AsyncAnthropic,
    forced: str,
    expected: str,
    stream: bool,
) -> None:
    provider.script(Reply(text="Sunny and", finish_reason=forced))
    if stream:
        events = await anthropic_events(anthropic_client)
        reason = next(e.delta.stop_reason for e in events if e.type == "message_delta")
    else:
        message = await anthropic_client.messages.create(model="c", max_tokens=9, messages=USER)
        reason = message.stop_reason
    assert reason == expected


# --------------------------------------------------------------------------- errors

OPENAI_ERRORS = [
    (ErrorReply.bad_key(), openai.AuthenticationError, "invalid_api_key"),
    (ErrorReply.rate_limited(retry_after=1), openai.RateLimitError, "rate_limit_exceeded"),
    (ErrorReply(500, "boom"), openai.InternalServerError, None),
    (ErrorReply(503, "unavailable"), openai.InternalServerError, None),
    (ErrorReply.context_overflow(), openai.BadRequestError, "context_length_exceeded"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("error", "exception", "code"), OPENAI_ERRORS)
async def test_openai_errors_are_typed(
    provider: FakeProvider,
    openai_client: AsyncOpenAI,
    error: ErrorReply,
    exception: type[openai.APIStatusError],
    code: str | None,
    stream: bool,
) -> None:
    provider.script(error)
    with pytest.raises(exception) as caught:
        await openai_client.chat.completions.create(model="m", messages=USER, stream=stream)
    assert caught.value.status_code == error.status
    assert caught.value.code == code
    assert caught.value.body["message"] == error.message  # type: ignore[index]
    assert (caught.value.request_id or "").startswith("req_")
    for name, value in error.headers.items():
        assert caught.value.response.headers[name] == value


ANTHROPIC_ERRORS = [
    (ErrorReply.bad_key(), anthropic.AuthenticationError, "authentication_error"),
    (ErrorReply.rate_limited(retry_after=1), anthropic.RateLimitError, "rate_limit_error"),
    (ErrorReply(500, "boom"), anthropic.InternalServerError, "api_error"),
    (ErrorReply(503, "unavailable"), anthropic.ServiceUnavailableError, "api_error"),
    (ErrorReply.overloaded(), anthropic.OverloadedError, "overloaded_error"),
    (ErrorReply.context_overflow(), anthropic.BadRequestError, "invalid_request_error"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("error", "exception", "error_type"), ANTHROPIC_ERRORS)
async def test_anthropic_errors_are_typed(
    provider: FakeProvider,
    anthropic_client: AsyncAnthropic,
    error: ErrorReply,
    exception: type[anthropic.APIStatusError],
    error_type: str,
    stream: bool,
) -> None:
    provider.script(error)
    with pytest.raises(exception) as caught:
        await anthropic_client.messages.create(
            model="c", max_tokens=9, messages=USER, stream=stream
        )
    assert caught.value.status_code == error.status
    assert (caught.value.type, caught.value.api_message) == (error_type, error.message)
    assert (caught.value.request_id or "").startswith("req_")
    for name, value in error.headers.items():
        assert caught.value.response.headers[name] == value


async def test_rate_limit_retry_after_is_readable(
    provider: FakeProvider, openai_client: AsyncOpenAI
) -> None:
    provider.script(ErrorReply.rate_limited(retry_after=7))
    with pytest.raises(openai.RateLimitError) as caught:
        await openai_client.chat.completions.create(model="m", messages=USER)
    assert caught.value.response.headers["retry-after"] == "7"
    assert ErrorReply.context_overflow().message.startswith("prompt is too long")


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_empty_script_fails_loudly_without_retries(provider: FakeProvider, api: str) -> None:
    """Even a retrying client stops at once: the 500 carries ``x-should-retry: false``."""
    if api == "openai":
        async with make_openai(provider, max_retries=3) as client:
            with pytest.raises(openai.InternalServerError, match="no scripted reply"):
                await client.chat.completions.create(model="m", messages=USER)
    else:
        async with make_anthropic(provider, max_retries=3) as client:
            with pytest.raises(anthropic.InternalServerError, match="no scripted reply"):
                await client.messages.create(model="c", max_tokens=9, messages=USER)
    assert len(provider.requests) == 1


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_sdk_retry_consumes_two_replies(provider: FakeProvider, api: str) -> None:
    provider.script(ErrorReply.server_error(retry_after_ms=10), Reply(text="recovered"))
    if api == "openai":
        async with make_openai(provider, max_retries=1) as client:
            completion = await client.chat.completions.create(model="m", messages=USER)
        assert completion.choices[0].message.content == "recovered"
    else:
        async with make_anthropic(provider, max_retries=1) as client:
            message = await client.messages.create(model="c", max_tokens=9, messages=USER)
        assert message.content[0].text == "recovered"  # type: ignore[union-attr]
    retries = [request.headers["x-stainless-retry-count"] for request in provider.requests]
    assert retries == ["0", "1"]
    assert provider.remaining_replies == 0


# --------------------------------------------------------------------------- recording


async def test_openai_request_is_recorded(
    provider: FakeProvider, openai_client: AsyncOpenAI
) -> None:
    provider.script(Reply(text="ok"))
    await openai_chunks(
        openai_client,
        tools=[OPENAI_TOOL],
        tool_choice="auto",
        stream_options={"include_usage": True},
        max_completion_tokens=50,
    )
    request = provider.last_request
    assert (request.api, request.method, request.path) == (
        "openai",
        "POST",
        "/openai/v1/chat/completions",
    )
    assert request.headers["authorization"] == "Bearer test"
    assert request.body is not None
    assert request.body["model"] == "gpt-4o-mini"
    assert request.body["messages"] == USER
    assert request.body["tools"] == [OPENAI_TOOL]
    assert request.body["tool_choice"] == "auto"
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.body["max_completion_tokens"] == 50


async def test_anthropic_request_is_recorded(
    provider: FakeProvider, anthropic_client: AsyncAnthropic
) -> None:
    provider.script(Reply(text="ok"))
    await anthropic_client.messages.create(
        model=CLAUDE,
        max_tokens=2048,
        system="Be brief.",
        messages=USER,
        tools=[ANTHROPIC_TOOL],
        tool_choice={"type": "auto"},
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    request = provider.last_request
    assert (request.api, request.path) == ("anthropic", "/anthropic/v1/messages")
    # anthropic 2.x sends the key as a bearer token; older SDKs used x-api-key.
    assert request.headers.get("x-api-key", "") == "test" or (
        request.headers.get("authorization") == "Bearer test"
    )
    assert "anthropic-version" in request.headers
    assert request.body == {
        "model": CLAUDE,
        "max_tokens": 2048,
        "system": "Be brief.",
        "messages": USER,
        "tools": [ANTHROPIC_TOOL],
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }


# --------------------------------------------------------------------------- validation


async def test_openai_tool_round_trip_is_validated(
    provider: FakeProvider, openai_client: AsyncOpenAI
) -> None:
    """A tool message must answer a call; a rejected request leaves the script untouched."""
    provider.script(Reply(tool_calls=PARALLEL[:1]), Reply(text="Sunny."))
    first = await openai_client.chat.completions.create(model="m", messages=USER)
    call = (first.choices[0].message.tool_calls or [])[0]
    assistant: Any = first.choices[0].message.model_dump(exclude_none=True)
    with pytest.raises(openai.BadRequestError, match="tool calls without a 'tool' message"):
        await openai_client.chat.completions.create(model="m", messages=[*USER, assistant])
    stray: Any = {"role": "tool", "tool_call_id": "call_unknown", "content": "18C"}
    with pytest.raises(openai.BadRequestError, match="unknown tool_call_id"):
        await openai_client.chat.completions.create(model="m", messages=[*USER, stray])
    assert provider.remaining_replies == 1
    answer: Any = {"role": "tool", "tool_call_id": call.id, "content": "18C"}
    final = await openai_client.chat.completions.create(
        model="m", messages=[*USER, assistant, answer]
    )
    assert final.choices[0].message.content == "Sunny."


async def test_anthropic_tool_round_trip_is_validated(
    provider: FakeProvider, anthropic_client: AsyncAnthropic
) -> None:
    provider.script(Reply(reasoning="Need weather.", tool_calls=PARALLEL[:1]), Reply(text="Sunny."))
    first = await anthropic_client.messages.create(model="c", max_tokens=9, messages=USER)
    assistant = first.to_param()
    tool_use_id = first.content[1].id  # type: ignore[union-attr]
    with pytest.raises(anthropic.BadRequestError, match="without a tool_result"):
        await anthropic_client.messages.create(model="c", max_tokens=9, messages=[*USER, assistant])
    assert provider.remaining_replies == 1
    result = {"type": "tool_result", "tool_use_id": tool_use_id, "content": "18C"}
    answer = {"role": "user", "content": [result]}
    final = await anthropic_client.messages.create(
        model="c",
        max_tokens=9,
        messages=[*USER, assistant, answer],  # type: ignore[list-item]
    )
    assert final.content[0].text == "Sunny."  # type: ignore[union-attr]
    sent_back = provider.last_request.body["messages"][1]["content"][0]  # type: ignore[index]
    assert sent_back["signature"] == signature_for("Need weather.")


# --------------------------------------------------------------------------- models


async def test_models_are_listed(provider: FakeProvider) -> None:
    provider.openai_models = ["gpt-test-1", "gpt-test-2"]
    provider.anthropic_models = ["claude-test-1"]
    async with make_openai(provider) as client:
        assert [model.id async for model in client.models.list()] == ["gpt-test-1", "gpt-test-2"]
        model = await client.models.retrieve("gpt-test-2")
        assert (model.object, model.owned_by) == ("model", "fake-provider")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-missing")
    async with make_anthropic(provider) as client:
        listed = [model async for model in client.models.list()]
        assert [(m.id, m.type, m.display_name) for m in listed] == [
            ("claude-test-1", "model", "Claude Test 1")
        ]
        assert (await client.models.retrieve("claude-test-1")).id == "claude-test-1"


# --------------------------------------------------------------------------- HTTP behaviour


async def test_connections_are_kept_alive_between_json_calls(
    provider: FakeProvider, openai_client: AsyncOpenAI
) -> None:
    """JSON answers reuse one connection; a stream closes its own and the next call reconnects."""
    provider.script(*[Reply(text="ok")] * 5)
    for _ in range(3):
        await openai_client.chat.completions.create(model="m", messages=USER)
    assert provider.connections_accepted == 1
    await openai_chunks(openai_client)
    completion = await openai_client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == "ok"
    assert provider.connections_accepted == 2


async def test_concurrent_requests_each_take_one_reply(
    provider: FakeProvider, openai_client: AsyncOpenAI
) -> None:
    """Handler threads share the script safely: parallel calls consume distinct replies."""
    texts = [f"reply {number}" for number in range(12)]
    provider.script(*[Reply(text=text) for text in texts])
    completions = await asyncio.gather(
        *[openai_client.chat.completions.create(model="m", messages=USER) for _ in texts]
    )
    assert sorted(c.choices[0].message.content or "" for c in completions) == sorted(texts)
    assert provider.remaining_replies == 0


async def test_abandoned_stream_is_harmless(
    provider: FakeProvider, openai_client: AsyncOpenAI
) -> None:
    provider.script(Reply(text="x" * 400, chunk_delay=0.005), Reply(text="next"))
    stream = await openai_client.chat.completions.create(model="m", messages=USER, stream=True)
    async for _ in stream:
        break
    await stream.close()
    completion = await openai_client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == "next"


async def test_delay_times_out_and_stop_is_prompt() -> None:
    provider = start_fake_provider()
    try:
        provider.script(Reply(text="late", delay=30))
        async with make_openai(provider, timeout=0.2) as client:
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(model="m", messages=USER)
    finally:
        started = time.monotonic()
        provider.stop()
    assert time.monotonic() - started < 2
    assert provider.remaining_replies == 0


async def test_stop_joins_every_thread() -> None:
    """An idle keep-alive connection must not keep a handler thread alive after stop()."""
    with FakeProvider() as provider:
        provider.script(Reply(text="ok"))
        async with make_openai(provider) as client:
            await client.chat.completions.create(model="m", messages=USER)
            provider.stop()
            with pytest.raises(openai.APIConnectionError):
                await client.chat.completions.create(model="m", messages=USER)
    leftovers = [t.name for t in threading.enumerate() if t.name.startswith("fake-provider")]
    assert leftovers == []
