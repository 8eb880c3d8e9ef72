"""The kept message buffers: valid for one start, extended only in order, bounded."""

from __future__ import annotations

from engram.adapters.llm.chat import ChatMessage, Role
from engram.services.runtime.buffer_cache import BufferCache

KEY = ("org-1", "agent-1")


def said(*texts: str) -> list[ChatMessage]:
    return [ChatMessage(Role.USER, text) for text in texts]


def test_a_buffer_is_found_for_its_start_only() -> None:
    cache = BufferCache()
    cache.store(KEY, start=3, last=5, messages=said("a", "b", "c"))

    assert cache.lookup(KEY, start=3, last=5) == (said("a", "b", "c"), 5)
    assert cache.lookup(KEY, start=3, last=9) == (said("a", "b", "c"), 5)  # newer ones to read
    assert cache.lookup(KEY, start=4, last=5) is None  # the buffer moved (compaction, reset)
    assert cache.lookup(KEY, start=3, last=4) is None  # it knows more than the database
    assert cache.lookup(("org-2", "agent-1"), start=3, last=5) is None


def test_a_lookup_returns_a_copy() -> None:
    cache = BufferCache()
    cache.store(KEY, 1, 1, said("a"))
    found = cache.lookup(KEY, 1, 1)
    assert found is not None
    found[0].append(ChatMessage(Role.USER, "not kept"))
    assert cache.lookup(KEY, 1, 1) == (said("a"), 1)


def test_messages_are_added_only_right_after_the_kept_ones() -> None:
    cache = BufferCache()
    cache.store(KEY, 1, 2, said("a", "b"))
    cache.extend(KEY, 1, after=2, messages=said("c"), last=3)
    assert cache.lookup(KEY, 1, 3) == (said("a", "b", "c"), 3)

    cache.extend(KEY, 1, after=5, messages=said("f"), last=6)  # a gap: forgotten
    assert cache.lookup(KEY, 1, 6) is None
    cache.extend(KEY, 1, after=6, messages=said("g"), last=7)  # nothing to extend
    assert cache.lookup(KEY, 1, 7) is None


def test_a_buffer_that_moved_is_forgotten_when_extended() -> None:
    cache = BufferCache()
    cache.store(KEY, 1, 2, said("a", "b"))
    cache.extend(KEY, 2, after=2, messages=said("summary"), last=3)
    assert cache.lookup(KEY, 1, 3) is None
    assert cache.lookup(KEY, 2, 3) is None


def test_the_least_recently_used_agent_goes_first() -> None:
    cache = BufferCache(capacity=2)
    cache.store(("o", "a"), 1, 1, said("a"))
    cache.store(("o", "b"), 1, 1, said("b"))
    assert cache.lookup(("o", "a"), 1, 1) is not None  # "a" is now the most recent
    cache.store(("o", "c"), 1, 1, said("c"))
    assert cache.lookup(("o", "b"), 1, 1) is None
    assert cache.lookup(("o", "a"), 1, 1) is not None
    assert cache.lookup(("o", "c"), 1, 1) is not None
