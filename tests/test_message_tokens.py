"""Remembered message counts: the same totals as counting afresh, without recounting."""

from __future__ import annotations

from engram.adapters.llm.chat import ChatMessage, Reasoning, Role, ToolCall, ToolSpec
from engram.adapters.tokens import EstimateCounter, count_context, count_message
from engram.services.runtime.message_tokens import MessageTokens


class CountingCounter:
    """The estimate, counting how many texts it was asked to count."""

    def __init__(self, name: str = "estimate") -> None:
        self.inner = EstimateCounter()
        self.calls = 0
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def exact(self) -> bool:
        return False

    def count(self, text: str) -> int:
        self.calls += 1
        return self.inner.count(text) + (1 if self._name == "other" else 0)


MESSAGES = [
    ChatMessage(Role.SYSTEM, "You are a patient assistant."),
    ChatMessage(Role.USER, "Hello there."),
    ChatMessage(
        Role.ASSISTANT,
        "",
        tool_calls=(ToolCall("c1", "send_message", '{"message": "Hi!"}'),),
        reasoning=Reasoning(text="Greet them."),
    ),
    ChatMessage(Role.TOOL, '{"status": "OK"}', tool_call_id="c1", name="send_message"),
]
TOOLS = [ToolSpec("send_message", "Say something.", {"type": "object", "properties": {}})]


def test_the_totals_are_those_of_count_context() -> None:
    counter = CountingCounter()
    tokens = MessageTokens()
    expected = count_context(counter, MESSAGES, TOOLS)
    assert tokens.count_context(counter, MESSAGES, TOOLS) == expected
    assert tokens.count_context(counter, MESSAGES, TOOLS) == expected


def test_a_message_is_counted_once() -> None:
    counter = CountingCounter()
    tokens = MessageTokens()
    tokens.count_context(counter, MESSAGES, [])
    first = counter.calls
    tokens.count_context(counter, [*MESSAGES, ChatMessage(Role.USER, "And now?")], [])
    # Only the new message is counted: its role and its text.
    assert counter.calls == first + 2


def test_counts_are_kept_per_counter() -> None:
    tokens = MessageTokens()
    one, other = CountingCounter(), CountingCounter("other")
    assert tokens.count(one, MESSAGES[1]) != tokens.count(other, MESSAGES[1])


def test_a_message_that_cannot_be_hashed_is_counted_anyway() -> None:
    counter = CountingCounter()
    listed = ChatMessage(Role.ASSISTANT, "", tool_calls=[ToolCall("c1", "f", "{}")])
    assert MessageTokens().count(counter, listed) == count_message(counter, listed)


def test_the_oldest_counts_go_first() -> None:
    counter = CountingCounter()
    tokens = MessageTokens(size=2)
    a, b, c = (ChatMessage(Role.USER, text) for text in "abc")
    for message in (a, b, c):
        tokens.count(counter, message)
    calls = counter.calls
    tokens.count(counter, c)
    assert counter.calls == calls
    tokens.count(counter, a)  # forgotten: counted again
    assert counter.calls == calls + 2


def test_the_inline_count_is_the_whole_count() -> None:
    counter = CountingCounter()
    tokens = MessageTokens()
    expected = count_context(counter, MESSAGES, TOOLS)
    assert tokens.count_context_inline(counter, MESSAGES, TOOLS) == expected
    assert tokens.count_context_inline(counter, MESSAGES, TOOLS, budget=0) == expected


def test_the_inline_count_gives_up_on_much_new_text() -> None:
    counter = CountingCounter()
    tokens = MessageTokens()
    long = ChatMessage(Role.USER, "word " * 400)
    assert tokens.count_context_inline(counter, [*MESSAGES, long], TOOLS, budget=1000) is None
    # What it counted before giving up is remembered; the rest is counted once.
    calls = counter.calls
    tokens.count_context(counter, [*MESSAGES, long], TOOLS)
    assert counter.calls == calls + 2 + 1  # the long message's role and text, and the tools
