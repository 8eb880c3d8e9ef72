"""Writing the summary that takes the place of the oldest part of an agent's buffer.

When the context nears its window (see :mod:`compaction`), the messages the
plan evicts are handed to the model in a plain completion (no tools, so it
cannot wander off into acting) with instructions to keep what the agent needs
to carry on.  The evicted messages are sent as a rendered transcript rather
than as chat messages: the evicted part may begin with an assistant message
or hold a tool call whose siblings were kept, which providers would refuse as
a conversation, while a transcript is just text.

Both ends are bounded: each message of the transcript is cut to
:data:`TRANSCRIPT_MESSAGE_CHARS` (a huge tool result must not make the
summary request itself overflow), and the summary to :data:`SUMMARY_CHAR_LIMIT`,
with a marker saying so.
"""

from __future__ import annotations

from collections.abc import Sequence

from engram.adapters.llm.chat import ChatMessage, ChatRequest, Role
from engram.adapters.llm.registry import LLMProvider

SUMMARY_CHAR_LIMIT = 50_000
TRANSCRIPT_MESSAGE_CHARS = 5_000

# Our own words throughout.
INSTRUCTIONS = (
    "You keep an AI agent's memory of its conversation intact. Its context window is full, "
    "so the oldest part of the conversation, shown below as a transcript, is about to leave "
    "its view; your summary will stand in for it. Write the summary the agent will need to "
    "carry on as if it still had those messages.\n"
    "Keep: what was learned about the user (names, preferences, circumstances, anything they "
    "asked to be remembered); decisions taken and promises made; tasks still open and the "
    "next step for each; results of tool calls that later work depends on.\n"
    "Leave out greetings, repetition and anything settled that will not matter again. Prefer "
    "short factual lines to prose. If an earlier summary is given, fold it in so nothing "
    "important from it is lost. Reply with the summary alone, without a preamble."
)
EARLIER_SUMMARY_HEADING = "Summary written at an earlier compaction:"
TRANSCRIPT_HEADING = "Messages to summarize, oldest first:"
EMPTY_SUMMARY = "(The model returned no summary for these messages.)"


def clip(text: str, limit: int, what: str) -> str:
    """``text`` cut to ``limit`` characters, saying so when it was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[{what} cut to {limit} characters]"


def render_transcript(messages: Sequence[ChatMessage]) -> str:
    """The messages as plain text, one entry per message or tool call, oldest first."""
    lines: list[str] = []
    for message in messages:
        lines.extend(_render(message))
    return "\n\n".join(lines)


def _render(message: ChatMessage) -> list[str]:
    limit = TRANSCRIPT_MESSAGE_CHARS
    if message.role is Role.TOOL:
        label = f"[result of {message.name or 'a tool'}]"
        return [f"{label} {clip(message.content, limit, 'result')}"]
    entries: list[str] = []
    if message.content:
        entries.append(f"[{message.role.value}] {clip(message.content, limit, 'message')}")
    for call in message.tool_calls:
        arguments = clip(call.arguments, limit, "arguments")
        entries.append(f"[{message.role.value} called {call.name}] {arguments}")
    return entries


def summary_prompt(messages: Sequence[ChatMessage], previous_summary: str | None) -> str:
    """The user message of the summary request: any earlier summary, then the transcript."""
    parts: list[str] = []
    if previous_summary:
        parts.append(f"{EARLIER_SUMMARY_HEADING}\n{previous_summary}")
    parts.append(f"{TRANSCRIPT_HEADING}\n{render_transcript(messages)}")
    return "\n\n".join(parts)


async def summarize(
    provider: LLMProvider,
    model: str,
    messages: Sequence[ChatMessage],
    previous_summary: str | None,
    timeout: float | None,  # noqa: ASYNC109 - the provider call's own limit, as in ChatRequest
    *,
    limit: int = SUMMARY_CHAR_LIMIT,
) -> str:
    """Ask ``model`` for a summary of ``messages`` (folding in ``previous_summary``).

    ``timeout`` (seconds, None for the provider's default) bounds the one
    provider call, the way :attr:`ChatRequest.timeout` does for the loop's.

    Provider errors propagate: a turn that cannot make room should fail
    loudly rather than drop messages without a summary.
    """
    request = ChatRequest(
        model=model,
        messages=[
            ChatMessage(Role.SYSTEM, INSTRUCTIONS),
            ChatMessage(Role.USER, summary_prompt(messages, previous_summary)),
        ],
        timeout=timeout,
    )
    result = await provider.complete(request)
    return clip(result.content.strip() or EMPTY_SUMMARY, limit, "summary")
