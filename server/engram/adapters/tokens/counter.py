"""What a token counter is, and what a chat message costs beyond its text.

A counter only counts text.  The functions here add what the provider adds
around it, after OpenAI's published accounting for chat models: each message
is framed by a few special tokens (:data:`MESSAGE_OVERHEAD`), a name costs one
more, and every reply is primed with the assistant's header
(:data:`REPLY_PRIMING`).  Tool calls are charged their name and JSON
arguments plus a small frame, and the tool schemas their JSON text: providers
render them in formats of their own, so those parts are close, not exact.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from engram.adapters.llm.chat import ChatMessage, ToolSpec

MESSAGE_OVERHEAD = 3  # the start, role-separator and end tokens around every message
NAME_OVERHEAD = 1  # a message with a name pays one token for the field
TOOL_CALL_OVERHEAD = 3  # the frame around each call's name and arguments
REPLY_PRIMING = 3  # the assistant header every reply starts with

# A turn recounts its whole buffer before every step, and the next turn the same
# buffer again: the counts of texts longer than MEMO_MIN_CHARS are remembered,
# keyed by length and hash (hashing is ~100x cheaper than tokenizing), so the
# memory holds numbers, never the texts.  A collision of both (odds ~2^-64 per
# pair) would only misjudge one count.
MEMO_SIZE = 16_384
MEMO_MIN_CHARS = 200


class _Memo:
    """An LRU map from (length, hash) of a text to its count; safe across threads."""

    def __init__(self, count: Callable[[str], int], size: int) -> None:
        self._count = count
        self._size = size
        self._counts: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, text: str) -> int:
        if len(text) < MEMO_MIN_CHARS:
            return self._count(text)
        key = (len(text), hash(text))
        with self._lock:
            known = self._counts.get(key)
            if known is not None:
                self._counts.move_to_end(key)
                return known
        counted = self._count(text)  # outside the lock: counting is the slow part
        with self._lock:
            self._counts[key] = counted
            if len(self._counts) > self._size:
                self._counts.popitem(last=False)
        return counted


def memoized(count: Callable[[str], int], size: int = MEMO_SIZE) -> Callable[[str], int]:
    """``count``, remembering the counts of the last ``size`` long texts (0: no memory)."""
    return _Memo(count, size) if size > 0 else count


class TokenCounter(Protocol):
    """Counts the tokens of a text for one model family."""

    @property
    def name(self) -> str:
        """The encoding's name (``o200k_base``), or ``estimate``."""
        ...

    @property
    def exact(self) -> bool:
        """Whether the counts are the model's own (True) or an estimate."""
        ...

    def count(self, text: str) -> int:
        """The number of tokens ``text`` takes (special tokens count as plain text)."""
        ...


def count_message(counter: TokenCounter, message: ChatMessage) -> int:
    """What ``message`` takes in the window: its role, text, calls, name and reasoning."""
    tokens = MESSAGE_OVERHEAD + counter.count(message.role.value) + counter.count(message.content)
    if message.name:
        tokens += NAME_OVERHEAD + counter.count(message.name)
    if message.tool_call_id:
        tokens += counter.count(message.tool_call_id)
    for call in message.tool_calls:
        tokens += TOOL_CALL_OVERHEAD + counter.count(call.name) + counter.count(call.arguments)
        tokens += counter.count(call.id)
    if message.reasoning is not None:
        # Sent back to providers that want it (Anthropic's thinking blocks).
        tokens += counter.count(message.reasoning.text or message.reasoning.redacted)
    return tokens


def count_messages(counter: TokenCounter, messages: Sequence[ChatMessage]) -> int:
    return sum(count_message(counter, message) for message in messages)


def count_tools(counter: TokenCounter, tools: Sequence[ToolSpec]) -> int:
    """The tool schemas sent with every call, as JSON (zero without tools)."""
    if not tools:
        return 0
    schemas = [
        {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
        for tool in tools
    ]
    return counter.count(json.dumps(schemas, ensure_ascii=False))


def count_context(
    counter: TokenCounter, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]
) -> int:
    """What one model call takes before the reply: every message, the tools, the priming."""
    return count_messages(counter, messages) + count_tools(counter, tools) + REPLY_PRIMING
