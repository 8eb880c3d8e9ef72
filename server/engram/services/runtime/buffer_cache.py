"""The agents' message buffers as this process last read or wrote them.

Every turn sends the agent's whole buffer to the model, so every turn used to
read it all back from the database and decode each row (JSON content, ORM
objects): the larger part of a step's server time once the buffer holds a
few hundred messages.  Stored messages never change and are numbered in
order, so a buffer known up to sequence number ``last`` stays right as long
as the buffer still starts where it did: a turn then reads only the messages
after ``last`` (none, when this process ran the agent's previous turn).

An entry is keyed by organization and agent and remembers the sequence the
buffer starts at; a buffer that starts elsewhere (after a compaction, a
reset, or for an agent that clears its buffer) is read again from the
database.  The cache is bounded by a number of agents, least recently used
first out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from engram.adapters.llm.chat import ChatMessage

# Agents whose buffers are kept.  A buffer is at most a context window of text,
# so this bounds the memory the cache can hold.
DEFAULT_CAPACITY = 256

Key = tuple[str, str]  # (organization id, agent id)


@dataclass
class _Entry:
    start: int  # the sequence number the buffer starts at
    last: int  # the highest sequence number the buffer includes
    messages: list[ChatMessage]  # in buffer order: a summary first, then by sequence


class BufferCache:
    """Message buffers by agent, valid for one buffer start and up to one sequence number."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()

    def lookup(self, key: Key, start: int, last: int) -> tuple[list[ChatMessage], int] | None:
        """A copy of the buffer starting at ``start``, and the sequence it is known up to.

        None when none is kept for that start, or when the kept one knows of
        messages the database does not have (``last`` is the database's).
        """
        entry = self._entries.get(key)
        if entry is None or entry.start != start or entry.last > last:
            return None
        self._entries.move_to_end(key)
        return list(entry.messages), entry.last

    def store(self, key: Key, start: int, last: int, messages: Sequence[ChatMessage]) -> None:
        """Keep the buffer that starts at ``start`` and includes every message up to ``last``."""
        self._entries[key] = _Entry(start, last, list(messages))
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def extend(
        self, key: Key, start: int, after: int, messages: Sequence[ChatMessage], last: int
    ) -> None:
        """Add the messages numbered ``after + 1`` to ``last`` to the kept buffer.

        Only when the kept buffer still starts at ``start`` and ends at
        ``after``; otherwise it is forgotten, to be read again.
        """
        entry = self._entries.get(key)
        if entry is None:
            return
        if entry.start != start or entry.last != after:
            del self._entries[key]
            return
        entry.messages.extend(messages)
        entry.last = last

    def forget(self, key: Key) -> None:
        self._entries.pop(key, None)
