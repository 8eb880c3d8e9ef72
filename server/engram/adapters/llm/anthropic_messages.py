"""Anthropic's Messages API via the official SDK, thinking included.

The Messages API differs from Chat Completions in ways the conversion below
handles: the system prompt is a parameter, not a message; roles must
alternate, so consecutive messages of one role (several tool results, say)
are merged into one; tool results travel as ``tool_result`` blocks of a user
message; and thinking blocks must be sent back unchanged, signature
included, when a turn continues after a tool call.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anthropic

from engram.adapters.llm.chat import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    Completed,
    FinishReason,
    HiddenReasoningStarted,
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

# The API requires max_tokens; this is used when the agent sets no limit.
DEFAULT_MAX_TOKENS = 4096
# Thinking budgets for the reasoning efforts the API exposes elsewhere as words.
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}
_FINISH_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "tool_use": FinishReason.TOOL_CALLS,
    "max_tokens": FinishReason.LENGTH,
    "refusal": FinishReason.CONTENT_FILTER,
}
_OVERFLOW_PHRASES = ("prompt is too long", "context window", "too many tokens")


@dataclass(frozen=True)
class AnthropicSettings:
    name: str
    api_key: str
    base_url: str | None = None
    max_retries: int = 2
    timeout: float = 300.0
    default_headers: Mapping[str, str] = field(default_factory=dict)


class AnthropicProvider:
    """One configured Anthropic endpoint."""

    def __init__(self, settings: AnthropicSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self._client = anthropic.AsyncAnthropic(
            api_key=settings.api_key or "not-configured",
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
        except anthropic.AnthropicError as error:
            raise translate_error(self.name, error) from error

    async def complete(self, request: ChatRequest) -> ChatResult:
        try:
            message = await self._client.messages.create(**request_parameters(request))
        except anthropic.AnthropicError as error:
            raise translate_error(self.name, error) from error
        return result_from_message(self.name, message)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        assembler = _StreamAssembler(self.name)
        try:
            events = await self._client.messages.create(**request_parameters(request), stream=True)
            async with events:
                async for event in events:
                    for neutral in assembler.feed(event):
                        yield neutral
        except anthropic.AnthropicError as error:
            raise translate_error(self.name, error) from error
        yield Completed(assembler.result())


# --- requests ------------------------------------------------------------------------


def request_parameters(request: ChatRequest) -> dict[str, Any]:
    system = "\n\n".join(m.content for m in request.messages if m.role is Role.SYSTEM)
    max_tokens = request.max_output_tokens or DEFAULT_MAX_TOKENS
    parameters: dict[str, Any] = {
        "model": request.model,
        "messages": conversation(request.messages),
    }
    if system:
        parameters["system"] = system
    forced = request.tool_choice.mode in ("required", "tool")
    budget = THINKING_BUDGETS.get(request.reasoning_effort)
    # The API refuses thinking together with a forced tool choice; forcing wins,
    # because it is how tool rules are enforced.
    if budget and not forced:
        parameters["thinking"] = {"type": "enabled", "budget_tokens": budget}
        max_tokens = max(max_tokens, budget + DEFAULT_MAX_TOKENS)
    elif request.temperature is not None:
        # With thinking on, the API accepts only its default temperature.
        parameters["temperature"] = request.temperature
    parameters["max_tokens"] = max_tokens
    if request.tools:
        parameters["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
            for t in request.tools
        ]
        parameters["tool_choice"] = _tool_choice(request.tool_choice, request.parallel_tool_calls)
    if request.timeout is not None:
        parameters["timeout"] = request.timeout
    return parameters


def _tool_choice(choice: ToolChoice, parallel: bool | None) -> dict[str, Any]:
    wire: dict[str, Any]
    if choice.mode == "tool":
        wire = {"type": "tool", "name": choice.name}
    elif choice.mode == "required":
        wire = {"type": "any"}
    elif choice.mode == "none":
        return {"type": "none"}
    else:
        wire = {"type": "auto"}
    if parallel is False:
        wire["disable_parallel_tool_use"] = True
    return wire


def _arguments_object(call: ToolCall) -> dict[str, Any]:
    """A tool call's input as the object the API wants; malformed JSON is sent as {}."""
    try:
        return call.parsed_arguments()
    except ValueError:
        return {}


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    if message.role is Role.TOOL:
        return [
            {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}
        ]
    blocks: list[dict[str, Any]] = []
    reasoning = message.reasoning
    if message.role is Role.ASSISTANT and reasoning is not None:
        if reasoning.signature:
            blocks.append(
                {"type": "thinking", "thinking": reasoning.text, "signature": reasoning.signature}
            )
        if reasoning.redacted:
            blocks.append({"type": "redacted_thinking", "data": reasoning.redacted})
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _arguments_object(call)}
        )
    return blocks


def conversation(messages: Any) -> list[dict[str, Any]]:
    """The non-system messages as alternating user/assistant turns of content blocks."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


# --- responses -----------------------------------------------------------------------


def _finish_reason(value: str | None) -> FinishReason:
    return _FINISH_REASONS.get(value or "", FinishReason.OTHER)


def result_from_message(provider: str, message: Any) -> ChatResult:
    text: list[str] = []
    thinking: list[str] = []
    signature = ""
    redacted: list[str] = []
    calls: list[ToolCall] = []
    for block in message.content:
        kind = getattr(block, "type", "")
        if kind == "text":
            text.append(block.text)
        elif kind == "thinking":
            thinking.append(block.thinking)
            signature = block.signature or signature
        elif kind == "redacted_thinking":
            redacted.append(block.data)
        elif kind == "tool_use":
            calls.append(ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input)))
    reasoning = None
    if thinking or redacted:
        reasoning = Reasoning(
            text="".join(thinking), signature=signature, redacted="".join(redacted)
        )
    usage = message.usage
    return ChatResult(
        content="".join(text),
        tool_calls=calls,
        finish_reason=_finish_reason(message.stop_reason),
        usage=Usage(usage.input_tokens, usage.output_tokens) if usage else Usage(),
        reasoning=reasoning,
        model=message.model or "",
        provider_finish_reason=message.stop_reason or "",
    )


@dataclass
class _Block:
    kind: str
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)
    signature: str = ""


class _StreamAssembler:
    """Turns Messages stream events into neutral events and the final result."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.blocks: dict[int, _Block] = {}
        self.tool_indexes: dict[int, int] = {}  # block index -> tool-call index
        self.stop_reason: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.model = ""

    def feed(self, event: Any) -> list[StreamEvent]:
        kind = getattr(event, "type", "")
        if kind == "message_start":
            self.model = event.message.model or ""
            self.input_tokens = event.message.usage.input_tokens or 0
            self.output_tokens = event.message.usage.output_tokens or 0
        elif kind == "content_block_start":
            return self._start(event.index, event.content_block)
        elif kind == "content_block_delta":
            return self._delta(event.index, event.delta)
        elif kind == "message_delta":
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            if event.usage is not None:
                self.output_tokens = event.usage.output_tokens or self.output_tokens
        return []

    def _start(self, index: int, block: Any) -> list[StreamEvent]:
        kind = getattr(block, "type", "")
        if kind == "tool_use":
            self.blocks[index] = _Block(kind, id=block.id, name=block.name)
            call_index = len(self.tool_indexes)
            self.tool_indexes[index] = call_index
            return [ToolCallDelta(call_index, block.id, block.name, "")]
        if kind == "redacted_thinking":
            self.blocks[index] = _Block(kind, parts=[block.data])
            return [HiddenReasoningStarted()]
        self.blocks[index] = _Block(kind)
        return []

    def _delta(self, index: int, delta: Any) -> list[StreamEvent]:
        block = self.blocks.get(index)
        if block is None:
            raise InvalidProviderResponseError(self.provider, "a delta for a block never started")
        kind = getattr(delta, "type", "")
        if kind == "text_delta":
            block.parts.append(delta.text)
            return [TextDelta(delta.text)]
        if kind == "thinking_delta":
            block.parts.append(delta.thinking)
            return [ReasoningDelta(delta.thinking)]
        if kind == "signature_delta":
            block.signature += delta.signature
            return []
        if kind == "input_json_delta":
            block.parts.append(delta.partial_json)
            return [ToolCallDelta(self.tool_indexes[index], arguments=delta.partial_json)]
        return []

    def result(self) -> ChatResult:
        text: list[str] = []
        thinking: list[str] = []
        redacted: list[str] = []
        signature = ""
        calls: list[ToolCall] = []
        for _, block in sorted(self.blocks.items()):
            joined = "".join(block.parts)
            if block.kind == "text":
                text.append(joined)
            elif block.kind == "thinking":
                thinking.append(joined)
                signature = block.signature or signature
            elif block.kind == "redacted_thinking":
                redacted.append(joined)
            elif block.kind == "tool_use":
                calls.append(ToolCall(id=block.id, name=block.name, arguments=joined or "{}"))
        reasoning = None
        if thinking or redacted:
            reasoning = Reasoning("".join(thinking), signature, "".join(redacted))
        return ChatResult(
            content="".join(text),
            tool_calls=calls,
            finish_reason=_finish_reason(self.stop_reason),
            usage=Usage(self.input_tokens, self.output_tokens),
            reasoning=reasoning,
            model=self.model,
            provider_finish_reason=self.stop_reason or "",
        )


# --- errors --------------------------------------------------------------------------


def translate_error(provider: str, error: anthropic.AnthropicError) -> ProviderError:
    if isinstance(error, anthropic.APITimeoutError):
        return ProviderTimeoutError(provider, "the request timed out")
    if isinstance(error, anthropic.APIConnectionError):
        return ProviderUnavailableError(provider, f"cannot connect: {error}")
    if isinstance(error, (anthropic.AuthenticationError, anthropic.PermissionDeniedError)):
        return ProviderAuthError(
            provider, f"the provider refused the configured API key: {error.message}"
        )
    if isinstance(error, anthropic.RateLimitError):
        return ProviderRateLimitedError(
            provider, error.message, retry_after_seconds(error.response.headers)
        )
    if isinstance(error, anthropic.APIStatusError):
        if error.status_code >= 500:  # 529 is Anthropic's "overloaded"
            return ProviderUnavailableError(
                provider, f"server error {error.status_code}: {error.message}"
            )
        if any(phrase in str(error.message).lower() for phrase in _OVERFLOW_PHRASES):
            return ContextWindowExceededError(provider, error.message)
        return ProviderRejectedRequestError(provider, error.message)
    return InvalidProviderResponseError(provider, str(error))
