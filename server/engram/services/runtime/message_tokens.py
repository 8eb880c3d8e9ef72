"""Token counts of whole messages, remembered across steps and turns.

Before every model call the turn counts its whole context, to compact in
time.  The counter remembers the counts of long texts only, so a buffer of
many short messages was tokenized again, message by message, at every step:
about 8 ms for 600 short messages, more than the rest of a step.  The count
of a message depends only on the message and the counter, so it is
remembered here under the message's hash (hashing a message is ~40x
cheaper than counting it; its strings cache their hashes); like the
counter's own memory, this holds numbers, never the texts.  A collision of
two messages' hashes would only misjudge one count.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence

from engram.adapters.llm.chat import ChatMessage, ToolSpec
from engram.adapters.tokens.counter import REPLY_PRIMING, TokenCounter, count_message, count_tools

# Messages whose counts are kept: the buffers of the agents a process serves.
MEMO_SIZE = 65_536
# How many characters of not yet counted messages a caller on the event loop
# may count in place (at most about half a millisecond with the estimate, the
# slowest counter); more goes to a thread.  A step usually has only the system
# message (its statistics changed) and the turn's newest messages to count,
# and handing those to a thread cost more than counting them.
INLINE_CHARS = 4_000


class MessageTokens:
    """An LRU map from (counter, hash of a message) to the message's count; safe across threads."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self._size = size
        self._counts: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._lock = threading.Lock()

    def count(self, counter: TokenCounter, message: ChatMessage) -> int:
        """What ``message`` takes in the window, as :func:`count_message` counts it."""
        try:
            key = (counter.name, hash(message))
        except TypeError:  # a message built with lists instead of tuples
            return count_message(counter, message)
        with self._lock:
            known = self._counts.get(key)
            if known is not None:
                self._counts.move_to_end(key)
                return known
        return self._remember(key, count_message(counter, message))

    def _remember(self, key: tuple[str, int], counted: int) -> int:
        with self._lock:
            self._counts[key] = counted
            if len(self._counts) > self._size:
                self._counts.popitem(last=False)
        return counted

    def count_context(
        self, counter: TokenCounter, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> int:
        """What one model call takes before the reply, as :func:`count_context` counts it."""
        total = sum(self.count(counter, message) for message in messages)
        return total + count_tools(counter, tools) + REPLY_PRIMING

    def count_context_inline(
        self,
        counter: TokenCounter,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        budget: int = INLINE_CHARS,
    ) -> int | None:
        """:meth:`count_context`, or None when it would count more than ``budget`` characters.

        For the event loop: remembered counts cost a lookup, and new messages
        are counted while their text stays within ``budget``.  Whatever was
        counted before giving up is remembered, so the caller's
        :meth:`count_context` (in a thread) does not count it again.
        """
        total = 0
        for message in messages:
            try:
                key = (counter.name, hash(message))
            except TypeError:
                return None
            with self._lock:
                known = self._counts.get(key)
                if known is not None:
                    self._counts.move_to_end(key)
            if known is None:
                budget -= _size(message)
                if budget < 0:
                    return None
                known = self._remember(key, count_message(counter, message))
            total += known
        return total + count_tools(counter, tools) + REPLY_PRIMING


def _size(message: ChatMessage) -> int:
    """Roughly the characters :func:`count_message` goes through."""
    size = len(message.content) + len(message.name) + len(message.tool_call_id)
    size += sum(len(call.arguments) + len(call.name) for call in message.tool_calls)
    if message.reasoning is not None:
        size += len(message.reasoning.text or message.reasoning.redacted)
    return size


@functools.cache
def default_message_tokens() -> MessageTokens:
    """The process's memory of message counts, shared by every turn."""
    return MessageTokens()
