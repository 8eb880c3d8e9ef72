"""The OpenAI and Anthropic adapters over the wire: the real SDKs against the fake provider."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from engram.adapters.llm.anthropic_messages import (
    DEFAULT_MAX_TOKENS,
    THINKING_BUDGETS,
    AnthropicProvider,
    AnthropicSettings,
)
from engram.adapters.llm.chat import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    Completed,
    FinishReason,
    Reasoning,
    ReasoningDelta,
    Role,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolSpec,
)
from engram.adapters.llm.errors import (
    ContextWindowExceededError,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimitedError,
    ProviderRejectedRequestError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from engram.adapters.llm.openai_chat import OpenAIChatProvider, OpenAIChatSettings
from support import fake_provider as fake
from support.fake_provider import ErrorReply, FakeProvider, Reply, signature_for
from support.postgres import free_port

WEATHER = ToolSpec(
    name="get_weather",
    description="The weather in a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city."}},
        "required": ["city"],
    },
)
CONVERSATION = (
    ChatMessage(Role.SYSTEM, "You are terse."),
    ChatMessage(Role.USER, "Weather in Paris and Rome?"),
)

Provider = OpenAIChatProvider | AnthropicProvider


def openai_provider(provider: FakeProvider, **settings: object) -> OpenAIChatProvider:
    options: dict[str, object] = {"max_retries": 0, **settings}
    return OpenAIChatProvider(
        OpenAIChatSettings(
            name="openai",
            api_key="sk-test",
            base_url=provider.openai_base_url,
            **options,  # type: ignore[arg-type]
        )
    )


def anthropic_provider(provider: FakeProvider) -> AnthropicProvider:
    return AnthropicProvider(
        AnthropicSettings(
            name="anthropic", api_key="ak-test", base_url=provider.anthropic_base_url, max_retries=0
        )
    )


def adapter_for(api: str, provider: FakeProvider) -> Provider:
    return openai_provider(provider) if api == "openai" else anthropic_provider(provider)


def model_for(api: str) -> str:
    return "gpt-test" if api == "openai" else "claude-test-model"


async def collect(adapter: Provider, request: ChatRequest) -> list[StreamEvent]:
    return [event async for event in adapter.stream(request)]


def final(events: Sequence[StreamEvent]) -> ChatResult:
    last = events[-1]
    assert isinstance(last, Completed)
    assert sum(isinstance(event, Completed) for event in events) == 1
    return last.result


APIS = ["openai", "anthropic"]


# --- text ----------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
async def test_a_text_answer(api: str, fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(text="Sunny in both.", prompt_tokens=21, completion_tokens=4))
    adapter = adapter_for(api, fake_provider)
    result = await adapter.complete(ChatRequest(model=model_for(api), messages=CONVERSATION))
    await adapter.close()

    assert result.content == "Sunny in both."
    assert result.tool_calls == []
    assert result.finish_reason is FinishReason.STOP
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (21, 4)
    sent = fake_provider.last_request
    assert sent is not None and sent.body is not None
    if api == "openai":
        assert sent.body["messages"][0] == {"role": "system", "content": "You are terse."}
        assert sent.headers["authorization"] == "Bearer sk-test"
    else:
        # The system prompt is a parameter; the API requires max_tokens.
        assert sent.body["system"] == "You are terse."
        assert [m["role"] for m in sent.body["messages"]] == ["user"]
        assert sent.body["max_tokens"] == DEFAULT_MAX_TOKENS


@pytest.mark.parametrize("api", APIS)
async def test_streamed_text_arrives_in_pieces(api: str, fake_provider: FakeProvider) -> None:
    text = "It is sunny in Paris and raining in Rome."
    fake_provider.script(Reply(text=text))
    adapter = adapter_for(api, fake_provider)
    events = await collect(adapter, ChatRequest(model=model_for(api), messages=CONVERSATION))
    await adapter.close()

    pieces = [event.text for event in events if isinstance(event, TextDelta)]
    assert len(pieces) > 1 and "".join(pieces) == text
    result = final(events)
    assert result.content == text and result.finish_reason is FinishReason.STOP
    assert result.usage.prompt_tokens == 10 and result.usage.completion_tokens == 5
    sent = fake_provider.last_request
    assert sent is not None and sent.body is not None
    assert sent.body["stream"] is True
    if api == "openai":
        assert sent.body["stream_options"] == {"include_usage": True}


# --- tools ---------------------------------------------------------------------------


def weather_calls() -> tuple[fake.ToolCall, fake.ToolCall]:
    return (
        fake.ToolCall("get_weather", {"city": "Paris"}, id="call_paris"),
        fake.ToolCall("get_weather", {"city": "Rome"}, id="call_rome"),
    )


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("streaming", [False, True])
async def test_parallel_tool_calls(api: str, streaming: bool, fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(text="Checking.", tool_calls=weather_calls()))
    adapter = adapter_for(api, fake_provider)
    request = ChatRequest(model=model_for(api), messages=CONVERSATION, tools=[WEATHER])
    if streaming:
        events = await collect(adapter, request)
        result = final(events)
        deltas = [event for event in events if isinstance(event, ToolCallDelta)]
        assert {delta.index for delta in deltas} == {0, 1}
        assert [d.name for d in deltas if d.name] == ["get_weather", "get_weather"]
    else:
        result = await adapter.complete(request)
    await adapter.close()

    assert result.finish_reason is FinishReason.TOOL_CALLS
    assert [(c.id, c.name, c.parsed_arguments()) for c in result.tool_calls] == [
        ("call_paris", "get_weather", {"city": "Paris"}),
        ("call_rome", "get_weather", {"city": "Rome"}),
    ]
    sent = fake_provider.last_request
    assert sent is not None and sent.body is not None
    if api == "openai":
        assert sent.body["tools"][0]["function"]["name"] == "get_weather"
        assert sent.body["tool_choice"] == "auto"
    else:
        assert sent.body["tools"][0]["input_schema"]["required"] == ["city"]
        assert sent.body["tool_choice"] == {"type": "auto"}


@pytest.mark.parametrize("api", APIS)
async def test_a_whole_tool_round_trip_is_accepted(api: str, fake_provider: FakeProvider) -> None:
    """Assistant tool calls and their results go back in each API's own shape.

    The fake refuses histories the real APIs refuse (a tool result without its
    call, a call without its result), so an accepted request is a correct one.
    """
    fake_provider.script(Reply(text="Paris 21C, Rome 25C."))
    calls = [
        ToolCall("call_paris", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_rome", "get_weather", '{"city": "Rome"}'),
    ]
    history = (
        *CONVERSATION,
        ChatMessage(Role.ASSISTANT, "Checking.", tool_calls=calls),
        ChatMessage(Role.TOOL, "21C", tool_call_id="call_paris", name="get_weather"),
        ChatMessage(Role.TOOL, "25C", tool_call_id="call_rome", name="get_weather"),
    )
    adapter = adapter_for(api, fake_provider)
    result = await adapter.complete(
        ChatRequest(model=model_for(api), messages=history, tools=[WEATHER])
    )
    await adapter.close()

    assert result.content == "Paris 21C, Rome 25C."
    sent = fake_provider.last_request
    assert sent is not None and sent.body is not None
    if api == "anthropic":
        # Roles alternate: both tool results travel in one user turn.
        assert [m["role"] for m in sent.body["messages"]] == ["user", "assistant", "user"]
        results = sent.body["messages"][2]["content"]
        assert [(b["type"], b["tool_use_id"]) for b in results] == [
            ("tool_result", "call_paris"),
            ("tool_result", "call_rome"),
        ]
        assert sent.body["messages"][1]["content"][1]["input"] == {"city": "Paris"}
    else:
        assert [m["role"] for m in sent.body["messages"]] == [
            "system",
            "user",
            "assistant",
            "tool",
            "tool",
        ]


@pytest.mark.parametrize("api", APIS)
async def test_forcing_one_tool(api: str, fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(tool_calls=[fake.ToolCall("get_weather", {"city": "Oslo"})]))
    adapter = adapter_for(api, fake_provider)
    await adapter.complete(
        ChatRequest(
            model=model_for(api),
            messages=CONVERSATION,
            tools=[WEATHER],
            tool_choice=ToolChoice("tool", "get_weather"),
            parallel_tool_calls=False,
            reasoning_effort="high",
        )
    )
    await adapter.close()
    sent = fake_provider.last_request
    assert sent is not None and sent.body is not None
    if api == "openai":
        assert sent.body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        assert sent.body["parallel_tool_calls"] is False
    else:
        assert sent.body["tool_choice"] == {
            "type": "tool",
            "name": "get_weather",
            "disable_parallel_tool_use": True,
        }
        # The API refuses thinking with a forced tool; forcing wins.
        assert "thinking" not in sent.body


async def test_malformed_arguments_reach_the_loop_verbatim(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        Reply(tool_calls=[fake.ToolCall("get_weather", '{"city": "Par')]),
        Reply(tool_calls=[fake.ToolCall("get_weather", '{"city": "Par')]),
    )
    adapter = openai_provider(fake_provider)
    request = ChatRequest(model="gpt-test", messages=CONVERSATION, tools=[WEATHER])
    for result in (await adapter.complete(request), final(await collect(adapter, request))):
        call = result.tool_calls[0]
        assert call.arguments == '{"city": "Par'
        with pytest.raises(ValueError, match="Unterminated string"):
            call.parsed_arguments()
    await adapter.close()


# --- reasoning -----------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("streaming", [False, True])
async def test_reasoning(api: str, streaming: bool, fake_provider: FakeProvider) -> None:
    thought = "Paris first, then Rome."
    fake_provider.script(Reply(text="Done.", reasoning=thought))
    adapter = adapter_for(api, fake_provider)
    request = ChatRequest(model=model_for(api), messages=CONVERSATION, reasoning_effort="medium")
    if streaming:
        events = await collect(adapter, request)
        pieces = [event.text for event in events if isinstance(event, ReasoningDelta)]
        assert "".join(pieces) == thought
        # Reasoning streams before the answer.
        first_text = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
        assert all(isinstance(e, ReasoningDelta) for e in events[: len(pieces)])
        assert first_text >= len(pieces)
        result = final(events)
    else:
        result = await adapter.complete(request)
    await adapter.close()

    assert result.reasoning is not None and result.reasoning.text == thought
    sent = fake_provider.last_request
    assert sent is not None and sent.body is not None
    if api == "anthropic":
        assert result.reasoning.signature == signature_for(thought)
        budget = THINKING_BUDGETS["medium"]
        assert sent.body["thinking"] == {"type": "enabled", "budget_tokens": budget}
        assert sent.body["max_tokens"] > budget
    else:
        assert sent.body["reasoning_effort"] == "medium"


async def test_thinking_goes_back_with_its_signature(fake_provider: FakeProvider) -> None:
    thought = "I need the weather tool."
    fake_provider.script(Reply(text="Paris is sunny."))
    adapter = anthropic_provider(fake_provider)
    history = (
        *CONVERSATION,
        ChatMessage(
            Role.ASSISTANT,
            tool_calls=[ToolCall("toolu_1", "get_weather", '{"city": "Paris"}')],
            reasoning=Reasoning(text=thought, signature=signature_for(thought)),
        ),
        ChatMessage(Role.TOOL, "sunny", tool_call_id="toolu_1"),
    )
    await adapter.complete(
        ChatRequest(
            model="claude-test-model", messages=history, tools=[WEATHER], reasoning_effort="low"
        )
    )
    await adapter.close()
    sent = fake_provider.last_request
    assert sent is not None and sent.body is not None
    assistant = sent.body["messages"][1]["content"]
    assert assistant[0] == {
        "type": "thinking",
        "thinking": thought,
        "signature": signature_for(thought),
    }
    assert assistant[1]["type"] == "tool_use"


# --- finish reasons ------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
async def test_hitting_the_output_limit(api: str, fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(text="Par", finish_reason="length"))
    adapter = adapter_for(api, fake_provider)
    result = final(
        await collect(
            adapter, ChatRequest(model=model_for(api), messages=CONVERSATION, max_output_tokens=3)
        )
    )
    await adapter.close()
    assert result.finish_reason is FinishReason.LENGTH
    sent = fake_provider.last_request
    assert sent is not None and sent.body is not None
    field = "max_completion_tokens" if api == "openai" else "max_tokens"
    assert sent.body[field] == 3


async def test_compatible_servers_get_max_tokens(fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(text="ok"))
    adapter = openai_provider(fake_provider, max_tokens_field="max_tokens")
    await adapter.complete(ChatRequest(model="llama", messages=CONVERSATION, max_output_tokens=7))
    await adapter.close()
    sent = fake_provider.last_request
    assert sent is not None and sent.body is not None
    assert sent.body["max_tokens"] == 7 and "max_completion_tokens" not in sent.body


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (ErrorReply.bad_key(), ProviderAuthError),
        (ErrorReply.rate_limited(retry_after=3), ProviderRateLimitedError),
        (ErrorReply.server_error(503), ProviderUnavailableError),
        (ErrorReply.context_overflow(), ContextWindowExceededError),
        (ErrorReply(404, "no such model: gpt-nothing"), ProviderRejectedRequestError),
    ],
)
async def test_provider_failures_become_neutral_errors(
    api: str,
    streaming: bool,
    reply: ErrorReply,
    expected: type[ProviderError],
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script(reply)
    adapter = adapter_for(api, fake_provider)
    request = ChatRequest(model=model_for(api), messages=CONVERSATION)
    with pytest.raises(expected) as raised:
        if streaming:
            await collect(adapter, request)
        else:
            await adapter.complete(request)
    await adapter.close()
    assert raised.value.provider == api
    if isinstance(raised.value, ProviderRateLimitedError):
        assert raised.value.retry_after == 3


@pytest.mark.parametrize("api", APIS)
async def test_anthropic_overloaded_is_unavailable(api: str, fake_provider: FakeProvider) -> None:
    fake_provider.script(ErrorReply.overloaded())
    adapter = adapter_for(api, fake_provider)
    with pytest.raises(ProviderUnavailableError):
        await adapter.complete(ChatRequest(model=model_for(api), messages=CONVERSATION))
    await adapter.close()


@pytest.mark.parametrize("api", APIS)
async def test_the_time_left_bounds_the_call(api: str, fake_provider: FakeProvider) -> None:
    fake_provider.script(Reply(text="late", delay=5))
    adapter = adapter_for(api, fake_provider)
    with pytest.raises(ProviderTimeoutError):
        await adapter.complete(
            ChatRequest(model=model_for(api), messages=CONVERSATION, timeout=0.2)
        )
    await adapter.close()


@pytest.mark.parametrize("api", APIS)
async def test_an_unreachable_provider_is_unavailable(api: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    adapter: Provider
    if api == "openai":
        adapter = OpenAIChatProvider(
            OpenAIChatSettings(name="openai", api_key="k", base_url=url + "/v1", max_retries=0)
        )
    else:
        adapter = AnthropicProvider(
            AnthropicSettings(name="anthropic", api_key="k", base_url=url, max_retries=0)
        )
    with pytest.raises(ProviderUnavailableError):
        await adapter.complete(ChatRequest(model=model_for(api), messages=CONVERSATION))
    await adapter.close()


@pytest.mark.parametrize("api", APIS)
async def test_the_sdk_retries_transient_failures(api: str, fake_provider: FakeProvider) -> None:
    fake_provider.script(ErrorReply.server_error(500, retry_after_ms=10), Reply(text="second try"))
    if api == "openai":
        adapter: Provider = openai_provider(fake_provider, max_retries=1)
    else:
        adapter = AnthropicProvider(
            AnthropicSettings(
                name="anthropic",
                api_key="k",
                base_url=fake_provider.anthropic_base_url,
                max_retries=1,
            )
        )
    result = await adapter.complete(ChatRequest(model=model_for(api), messages=CONVERSATION))
    await adapter.close()
    assert result.content == "second try"
    assert len(fake_provider.requests) == 2


@pytest.mark.parametrize("api", APIS)
async def test_models_are_listed(api: str, fake_provider: FakeProvider) -> None:
    adapter = adapter_for(api, fake_provider)
    models = await adapter.list_models()
    await adapter.close()
    expected = fake.DEFAULT_OPENAI_MODELS if api == "openai" else fake.DEFAULT_ANTHROPIC_MODELS
    assert models == sorted(expected)


def test_tool_call_arguments_must_be_an_object() -> None:
    assert ToolCall("c", "t", "").parsed_arguments() == {}
    with pytest.raises(ValueError, match="not a JSON object"):
        ToolCall("c", "t", json.dumps([1, 2])).parsed_arguments()
