"""Planning which messages to summarize: goal, growth, and the invariants a model relies on."""

from __future__ import annotations

import pytest

from engram.services.runtime.compaction import (
    BufferEntry,
    CompactionMode,
    EntryRole,
    SystemPromptTooLargeError,
    needs_compaction,
    plan_compaction,
)

S, U, A, T, SUM = (
    EntryRole.SYSTEM,
    EntryRole.USER,
    EntryRole.ASSISTANT,
    EntryRole.TOOL,
    EntryRole.SUMMARY,
)


def buffer(*roles: EntryRole, tokens: int = 10, system_tokens: int = 10) -> list[BufferEntry]:
    entries = [BufferEntry("m0", S, system_tokens)]
    entries += [BufferEntry(f"m{i}", role, tokens) for i, role in enumerate(roles, start=1)]
    return entries


def test_threshold_is_ninety_percent_by_default() -> None:
    assert not needs_compaction(900, 1000)
    assert needs_compaction(901, 1000)


def test_the_smallest_eviction_that_fits_the_goal() -> None:
    # 10 exchanges of 10 tokens plus a 10-token system message: 110 tokens, window 100.
    entries = buffer(*[U, A] * 5)
    plan = plan_compaction(entries, window=100)
    # Goal: under 70 tokens. Evicting 30% (3 of 10) keeps 10 + 70 = 80: too many;
    # 40% keeps 70: still not under; 50% keeps 60.
    assert plan.mode is CompactionMode.SLIDING_WINDOW
    assert plan.evicted == ("m1", "m2", "m3", "m4", "m5")
    assert plan.kept == ("m0", "m6", "m7", "m8", "m9", "m10")
    assert plan.kept_tokens == 60


def test_a_tool_result_is_never_separated_from_its_call() -> None:
    # user, assistant(call), tool, tool, assistant, user, assistant, ...
    entries = buffer(U, A, T, T, A, U, A, U, A, U)
    plan = plan_compaction(entries, window=100)
    kept_roles = [entry.role for entry in entries if entry.id in plan.kept[1:]]
    assert kept_roles[0] is not EntryRole.TOOL
    evicted = set(plan.evicted)
    for index, entry in enumerate(entries):
        if entry.role is EntryRole.TOOL and entry.id not in evicted:
            # Its call (the nearest assistant before it) is kept too.
            call = next(e for e in reversed(entries[:index]) if e.role is EntryRole.ASSISTANT)
            assert call.id not in evicted


def test_the_cut_moves_past_tool_results() -> None:
    entries = buffer(U, A, T, T, T, A, U, A, U, A)
    plan = plan_compaction(entries, window=100)
    # 30% of 10 would cut at m4 (a tool result); the cut moves on to m6.
    assert plan.kept[1] == "m6"


def test_a_pending_approval_and_what_follows_always_stay() -> None:
    entries = buffer(U, A, U, A, U, A, U, A, tokens=20)
    entries.append(BufferEntry("approval", A, 20, pending_approval=True))
    plan = plan_compaction(entries, window=60)
    assert "approval" in plan.kept and "approval" not in plan.evicted
    # The goal (42 tokens) is met only by evicting everything before the approval.
    assert plan.kept == ("m0", "approval")
    assert plan.kept_tokens == 30


def test_when_no_cut_fits_everything_before_the_tail_is_summarized() -> None:
    entries = buffer(U, A, U, A)
    entries.append(BufferEntry("approval", A, 50, pending_approval=True))
    plan = plan_compaction(entries, window=60)
    # Even system + approval (60 tokens) misses the goal (42): summarize all that may go.
    assert plan.mode is CompactionMode.ALL
    assert plan.evicted == ("m1", "m2", "m3", "m4")
    assert plan.kept == ("m0", "approval")


def test_an_earlier_summary_is_folded_into_the_next() -> None:
    entries = buffer(SUM, U, A, U, A, U, A, U, A, U)
    plan = plan_compaction(entries, window=100)
    assert plan.evicted[0] == "m1"


def test_a_system_message_larger_than_the_window_cannot_be_helped() -> None:
    with pytest.raises(SystemPromptTooLargeError, match="100 tokens of a 100-token window"):
        plan_compaction(buffer(U, A, system_tokens=100), window=100)


def test_the_buffer_must_start_with_the_system_message() -> None:
    with pytest.raises(ValueError, match="must start with the system message"):
        plan_compaction([BufferEntry("u", U, 5)], window=100)
