"""OpenAI Chat Completions, and every endpoint that speaks it (Azure OpenAI, Groq,
OpenRouter, Together, Ollama, vLLM, LM Studio, llama.cpp server), via the official SDK.

Compatible servers differ in small ways this adapter absorbs: some send the
model's reasoning as a ``reasoning_content`` field that the SDK does not
declare, and older ones know ``max_tokens`` but not ``max_completion_tokens``.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

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
    Usage,
)
from engram.adapters.llm.errors import (
    ContextWindowExceededError,
    InvalidProviderResponseError,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimitedError,
    ProviderRejectedRequestError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from engram.adapters.llm.retry_after import retry_after_seconds

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
}
# How providers word "the prompt is too long" when they send no error code.
_OVERFLOW_PHRASES = ("context length", "context_length", "context window", "too many tokens")


@dataclass(frozen=True)
class OpenAIChatSettings:
    """How to reach one OpenAI-style endpoint."""

    name: str  # the provider's name in model handles ("openai", "groq", ...)
    api_key: str
    base_url: str | None = None
    max_retries: int = 2
    timeout: float = 300.0
    # OpenAI's own API wants max_completion_tokens; most compatible servers max_tokens.
    max_tokens_field: str = "max_completion_tokens"
    default_headers: Mapping[str, str] = field(default_factory=dict)


class OpenAIChatProvider:
    """One configured OpenAI-style endpoint."""

    def __init__(self, settings: OpenAIChatSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self._client = openai.AsyncOpenAI(
            # Local servers (Ollama, vLLM) accept any key, but the SDK insists on one.
            api_key=settings.api_key or "not-needed",
            base_url=settings.base_url,
            max_retries=settings.max_retries,
            timeout=settings.timeout,
            default_headers=dict(settings.default_headers) or None,
        )

    async def close(self) -> None:
        await self._client.close()

    async def list_models(self) -> list[str]:
        try:
            page = await self._client.models.list()
            return sorted(model.id for model in page.data)
        except openai.OpenAIError as error:
            raise translate_error(self.name, error) from error

    async def _post(self, request: ChatRequest, *, stream: bool) -> Any:
        """POST /chat/completions through the SDK client, skipping its parameter transform.

        ``chat.completions.create`` first walks the whole request through the
        SDK's typed-dict transformer, which measured 28 ms of CPU per call for a
        small agent (more than everything else in a step together).  Our request
        is plain JSON of the right shape, encoded here (:func:`request_body`),
        so it goes straight to the client's ``post``, which still does
        authentication, retries, timeouts, response parsing and streaming.
        """
        options: dict[str, Any] = {"security": {"bearer_auth": True}}
        if request.timeout is not None:
            options["timeout"] = request.timeout
        body = request_body(request, self.settings.max_tokens_field, stream=stream)
        # The options are a plain dict where the SDK declares its private RequestOptions.
        return await self._client.post(  # type: ignore[call-overload]
            "/chat/completions",
            content=body,
            cast_to=ChatCompletion,
            options=options,
            stream=stream,
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
        )

    async def complete(self, request: ChatRequest) -> ChatResult:
        """One call, answered whole."""
        try:
            response = await self._post(request, stream=False)
        except openai.OpenAIError as error:
            raise translate_error(self.name, error) from error
        return result_from_completion(self.name, response)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """One call, answered as it is generated; ends with :class:`Completed`."""
        assembler = _StreamAssembler(self.name)
        try:
            chunks = await self._post(request, stream=True)
            async with chunks:
                async for chunk in chunks:
                    for event in assembler.feed(chunk):
                        yield event
        except openai.OpenAIError as error:
            raise translate_error(self.name, error) from error
        yield Completed(assembler.result())


# --- requests ------------------------------------------------------------------------


# JSON as the SDK itself encodes request bodies: UTF-8 as is, no spaces, no NaN.
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
# Each message's encoded form, for as long as the message exists.  A turn's
# buffer is the same message objects from step to step (and from turn to
# turn, kept by the buffer cache), and re-encoding it was most of a request's
# cost; holding the encodings weakly ties their lifetime to the messages'.
_ENCODED: weakref.WeakKeyDictionary[ChatMessage, str] = weakref.WeakKeyDictionary()


def request_body(request: ChatRequest, max_tokens_field: str, *, stream: bool) -> bytes:
    """The JSON body of :func:`request_parameters`, messages encoded once per message.

    Key order aside, the same JSON as the SDK would send for those parameters.
    """
    parameters = request_parameters(request, max_tokens_field, stream=stream, messages=False)
    parameters.pop("timeout", None)  # a client option, not part of the body
    messages = ",".join(_encoded(message) for message in request.messages)
    rest = _ENCODE(parameters)  # never empty: the model is always there
    return f'{{"messages":[{messages}],{rest[1:]}'.encode()


def _encoded(message: ChatMessage) -> str:
    try:
        known = _ENCODED.get(message)
    except TypeError:  # unhashable (tool calls in a list): encoded every time
        return _ENCODE(_message(message))
    if known is None:
        known = _ENCODED[message] = _ENCODE(_message(message))
    return known


def request_parameters(
    request: ChatRequest, max_tokens_field: str, *, stream: bool, messages: bool = True
) -> dict[str, Any]:
    """The request's JSON parameters; with ``messages=False``, all but the messages."""
    parameters: dict[str, Any] = {"model": request.model}
    if messages:
        parameters["messages"] = [_message(message) for message in request.messages]
    if request.tools:
        parameters["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": dict(tool.parameters),
                },
            }
            for tool in request.tools
        ]
        parameters["tool_choice"] = _tool_choice(request.tool_choice)
        if request.parallel_tool_calls is not None:
            parameters["parallel_tool_calls"] = request.parallel_tool_calls
    if request.temperature is not None:
        parameters["temperature"] = request.temperature
    if request.max_output_tokens:
        parameters[max_tokens_field] = request.max_output_tokens
    if request.reasoning_effort:
        parameters["reasoning_effort"] = request.reasoning_effort
    if request.timeout is not None:
        parameters["timeout"] = request.timeout
    if stream:
        parameters["stream"] = True
        parameters["stream_options"] = {"include_usage": True}
    return parameters


def _tool_choice(choice: ToolChoice) -> Any:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def _message(message: ChatMessage) -> dict[str, Any]:
    if message.role is Role.TOOL:
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    wire: dict[str, Any] = {"role": message.role.value, "content": message.content}
    if message.role is Role.ASSISTANT and message.tool_calls:
        wire["content"] = message.content or None
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    return wire


# --- responses -----------------------------------------------------------------------


def _finish_reason(value: str | None) -> FinishReason:
    return _FINISH_REASONS.get(value or "", FinishReason.OTHER)


def _extra_text(model: Any, name: str) -> str:
    """A string field the SDK does not declare (pydantic keeps it as an extra)."""
    extra = getattr(model, "model_extra", None) or {}
    value = extra.get(name)
    return value if isinstance(value, str) else ""


def result_from_completion(provider: str, response: Any) -> ChatResult:
    if not response.choices:
        raise InvalidProviderResponseError(provider, "the completion has no choices")
    choice = response.choices[0]
    message = choice.message
    calls = [
        ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments or "")
        for call in message.tool_calls or ()
        if getattr(call, "function", None) is not None
    ]
    reasoning = _extra_text(message, "reasoning_content") or _extra_text(message, "reasoning")
    usage = response.usage
    return ChatResult(
        content=message.content or "",
        tool_calls=calls,
        finish_reason=_finish_reason(choice.finish_reason),
        usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
        reasoning=Reasoning(text=reasoning) if reasoning else None,
        model=response.model or "",
        provider_finish_reason=choice.finish_reason or "",
    )


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _StreamAssembler:
    """Turns chunks into neutral events and keeps what is needed for the final result."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, _PartialCall] = {}
        self.finish: str | None = None
        self.usage = Usage()
        self.model = ""

    def feed(self, chunk: Any) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        self.model = chunk.model or self.model
        if chunk.usage is not None:
            self.usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta is not None:
                events.extend(self._delta(delta))
            if choice.finish_reason:
                self.finish = choice.finish_reason
        return events

    def _delta(self, delta: Any) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        reasoning = _extra_text(delta, "reasoning_content") or _extra_text(delta, "reasoning")
        if reasoning:
            self.reasoning.append(reasoning)
            events.append(ReasoningDelta(reasoning))
        if delta.content:
            self.text.append(delta.content)
            events.append(TextDelta(delta.content))
        for piece in delta.tool_calls or ():
            partial = self.calls.setdefault(piece.index, _PartialCall())
            function = piece.function
            name = (function.name if function else None) or ""
            arguments = (function.arguments if function else None) or ""
            partial.id = partial.id or piece.id or ""
            partial.name = partial.name or name
            partial.arguments.append(arguments)
            events.append(ToolCallDelta(piece.index, piece.id or "", name, arguments))
        return events

    def result(self) -> ChatResult:
        calls = [
            ToolCall(id=call.id, name=call.name, arguments="".join(call.arguments))
            for _, call in sorted(self.calls.items())
        ]
        if any(not call.name for call in calls):
            raise InvalidProviderResponseError(self.provider, "a streamed tool call has no name")
        reasoning = "".join(self.reasoning)
        return ChatResult(
            content="".join(self.text),
            tool_calls=calls,
            finish_reason=_finish_reason(self.finish),
            usage=self.usage,
            reasoning=Reasoning(text=reasoning) if reasoning else None,
            model=self.model,
            provider_finish_reason=self.finish or "",
        )


# --- errors --------------------------------------------------------------------------


def _is_context_overflow(error: openai.APIStatusError) -> bool:
    code = getattr(error, "code", None)
    if code == "context_length_exceeded":
        return True
    text = str(getattr(error, "message", "") or error).lower()
    return any(phrase in text for phrase in _OVERFLOW_PHRASES)


def translate_error(provider: str, error: openai.OpenAIError) -> ProviderError:
    """The neutral error for an SDK exception (after the SDK's own retries)."""
    if isinstance(error, openai.APITimeoutError):
        return ProviderTimeoutError(provider, "the request timed out")
    if isinstance(error, openai.APIConnectionError):
        return ProviderUnavailableError(provider, f"cannot connect: {error}")
    if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return ProviderAuthError(
            provider, f"the provider refused the configured API key: {error.message}"
        )
    if isinstance(error, openai.RateLimitError):
        return ProviderRateLimitedError(
            provider, error.message, retry_after_seconds(error.response.headers)
        )
    if isinstance(error, openai.APIStatusError):
        if error.status_code >= 500:
            return ProviderUnavailableError(
                provider, f"server error {error.status_code}: {error.message}"
            )
        if _is_context_overflow(error):
            return ContextWindowExceededError(provider, error.message)
        return ProviderRejectedRequestError(provider, error.message)
    return InvalidProviderResponseError(provider, str(error))
