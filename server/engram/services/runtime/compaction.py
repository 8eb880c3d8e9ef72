"""Choosing which messages of an agent's buffer to fold into a summary.

When the context passes its threshold (by default 90% of the window), the
oldest part of the message buffer is replaced by a summary.  This module only
*plans* that: given the buffer with a token count per message, it picks the
cut.  The counts come from the agent's model's counter
(:mod:`engram.adapters.tokens`: tiktoken for OpenAI models, a calibrated
estimate for the others), which is why the trigger leaves 10% free.  Writing
the summary is :mod:`engram.services.runtime.summarizer`'s work; storing it
and moving the buffer's start is :class:`engram.services.messages.MessageService`'s.

The plan keeps the invariants a model relies on:

* the system message (index 0) is never evicted;
* a tool call is never separated from its results: the kept part never starts
  with a tool result, so every result it holds still follows its call;
* a pending approval request, and everything after it, is never evicted (the
  client is about to answer it).

Like the reference's sliding window, eviction starts with a fraction of the
buffer (30%) and grows in steps of 10% until the kept part fits the goal,
``(1 - fraction_start) * window`` tokens; when no cut fits, everything
between the system message and the protected tail is summarized.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_TRIGGER_FRACTION = 0.9
DEFAULT_FIRST_EVICTION = 0.3
EVICTION_STEP = 0.1


class EntryRole(enum.StrEnum):
    SYSTEM = "system"
    SUMMARY = "summary"  # an earlier compaction's summary, folded into the next one
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True)
class BufferEntry:
    """One message of the buffer as the planner sees it."""

    id: str
    role: EntryRole
    tokens: int
    pending_approval: bool = False  # an approval request the client has not answered yet


class CompactionMode(enum.StrEnum):
    SLIDING_WINDOW = "sliding_window"
    ALL = "all"


@dataclass(frozen=True)
class CompactionPlan:
    """Which entries to summarize (in order) and which stay in the buffer."""

    evicted: tuple[str, ...]
    kept: tuple[str, ...]
    mode: CompactionMode
    kept_tokens: int

    @property
    def changes_anything(self) -> bool:
        return bool(self.evicted)


class SystemPromptTooLargeError(Exception):
    """The system message alone does not fit the window: no compaction can help."""


def needs_compaction(
    total_tokens: int, window: int, trigger_fraction: float = DEFAULT_TRIGGER_FRACTION
) -> bool:
    """Whether a context of ``total_tokens`` has passed the compaction threshold."""
    return total_tokens > int(window * trigger_fraction)


def _protected_tail_start(entries: Sequence[BufferEntry]) -> int:
    """Index of the first pending approval: it and all after it must stay."""
    for index, entry in enumerate(entries):
        if entry.pending_approval:
            return index
    return len(entries)


def _cut_points(entries: Sequence[BufferEntry], limit: int) -> list[int]:
    """Indexes where the kept part may start: after the system message, up to ``limit``.

    A cut at ``i`` keeps ``entries[i:]``; it is valid when ``entries[i]`` is not
    a tool result (which would be orphaned from its call).  ``limit`` itself
    (keep only the protected tail) is always valid: the tail starts at an
    approval request or at the end.
    """
    points = [index for index in range(2, limit) if entries[index].role is not EntryRole.TOOL]
    return [*points, limit]


def plan_compaction(
    entries: Sequence[BufferEntry],
    window: int,
    *,
    first_eviction: float = DEFAULT_FIRST_EVICTION,
) -> CompactionPlan:
    """Plan the smallest sliding-window eviction that brings the buffer under the goal."""
    if not entries or entries[0].role is not EntryRole.SYSTEM:
        raise ValueError("the buffer must start with the system message")
    system_tokens = entries[0].tokens
    if system_tokens >= window:
        raise SystemPromptTooLargeError(
            f"the system message alone takes {system_tokens} tokens of a {window}-token window"
        )
    goal = (1 - first_eviction) * window
    tail = _protected_tail_start(entries)
    points = _cut_points(entries, tail)
    suffix_tokens = _suffix_sums(entries)
    count = len(entries) - 1  # messages after the system message
    fraction = first_eviction
    while fraction < 1 + 1e-9:
        wanted = 1 + round(fraction * count)
        cut = _first_point_at_or_after(points, wanted)
        kept_tokens = system_tokens + suffix_tokens[cut]
        if kept_tokens < goal:
            return _plan(entries, cut, CompactionMode.SLIDING_WINDOW, kept_tokens)
        fraction += EVICTION_STEP
    cut = points[-1]
    return _plan(entries, cut, CompactionMode.ALL, system_tokens + suffix_tokens[cut])


def _suffix_sums(entries: Sequence[BufferEntry]) -> list[int]:
    """``sums[i]`` = tokens of ``entries[i:]``; ``sums[len]`` = 0."""
    sums = [0] * (len(entries) + 1)
    for index in range(len(entries) - 1, -1, -1):
        sums[index] = sums[index + 1] + entries[index].tokens
    return sums


def _first_point_at_or_after(points: Sequence[int], wanted: int) -> int:
    for point in points:
        if point >= wanted:
            return point
    return points[-1]


def _plan(
    entries: Sequence[BufferEntry], cut: int, mode: CompactionMode, kept_tokens: int
) -> CompactionPlan:
    return CompactionPlan(
        evicted=tuple(entry.id for entry in entries[1:cut]),
        kept=(entries[0].id, *(entry.id for entry in entries[cut:])),
        mode=mode,
        kept_tokens=kept_tokens,
    )
