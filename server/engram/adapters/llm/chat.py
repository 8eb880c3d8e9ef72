"""The provider-neutral shape of one LLM call: what goes in, what comes out, what streams.

The agent loop speaks only these types; each adapter translates them to and
from one provider's wire format.  They are plain dataclasses with no SDK or
protobuf types in them, so that the loop, the store and the gRPC layer never
depend on a provider SDK.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class FinishReason(enum.StrEnum):
    """Why the model stopped, in one vocabulary for every provider."""

    STOP = "stop"  # a complete answer
    TOOL_CALLS = "tool_calls"  # it wants tools run
    LENGTH = "length"  # it hit the output token limit
    CONTENT_FILTER = "content_filter"  # the provider withheld the output
    OTHER = "other"  # anything a provider adds later


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model made. ``arguments`` is the raw JSON text, exactly as sent."""

    id: str
    name: str
    arguments: str

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; raises ValueError when they are not a JSON object."""
        value = json.loads(self.arguments or "{}")
        if not isinstance(value, dict):
            raise ValueError("tool-call arguments are not a JSON object")
        return value


@dataclass(frozen=True)
class Reasoning:
    """The model's visible reasoning, with the provider's signature when it sends one.

    Anthropic requires thinking blocks to be sent back unchanged (signature
    included) when a turn continues after a tool call, so the signature travels
    with the text.  ``redacted`` holds opaque reasoning the provider encrypted.
    """

    text: str = ""
    signature: str = ""
    redacted: str = ""


@dataclass(frozen=True)
class ChatMessage:
    """One message of the conversation sent to the model."""

    role: Role
    content: str = ""
    tool_calls: Sequence[ToolCall] = ()
    tool_call_id: str = ""  # for Role.TOOL: the call this answers
    name: str = ""  # for Role.TOOL: the tool's name (some providers want it)
    reasoning: Reasoning | None = None  # for Role.ASSISTANT: to send back to the provider
    # The id the message is stored under, when it was chosen before the message was
    # complete (token streaming announces it with the first piece); "" lets the store pick.
    id: str = ""


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model: its name, description and JSON Schema of parameters."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ToolChoice:
    """Which tools the model may or must call.

    ``mode`` is "auto" (may call any), "required" (must call one), "none", or
    "tool" (must call ``name``: how the loop forces a tool-rule child).
    """

    mode: str = "auto"
    name: str = ""


@dataclass(frozen=True)
class ChatRequest:
    """Everything one call needs. ``timeout`` is the seconds left for this call."""

    model: str
    messages: Sequence[ChatMessage]
    tools: Sequence[ToolSpec] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    reasoning_effort: str = ""  # "", "low", "medium" or "high"
    timeout: float | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ChatResult:
    """The model's whole answer to one call."""

    content: str
    tool_calls: Sequence[ToolCall]
    finish_reason: FinishReason
    usage: Usage
    reasoning: Reasoning | None = None
    model: str = ""
    provider_finish_reason: str = ""  # the provider's own word, for logs


# --- streaming ---------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call. ``id`` and ``name`` arrive with the first piece of ``index``.

    ``index`` is the call's position among the answer's calls, from 0; pieces
    of calls made in parallel may arrive interleaved, told apart by it.
    """

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class HiddenReasoningStarted:
    """The model reasons in a block the provider encrypts (sent whole with the result)."""


@dataclass(frozen=True)
class Completed:
    """The last event of a stream: the whole answer, assembled by the adapter."""

    result: ChatResult


StreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | HiddenReasoningStarted | Completed
