"""The built-in memory tools acting on an agent's working core memory.

Each tool's result is what the model reads and each refusal is an error the
model can act on, so both are asserted as exact text; limits are checked at
exactly the limit and one character over it.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from engram.services.base_tools import BASE_TOOLS
from engram.services.runtime.core_memory import (
    LINE_NUMBER_NOTICE,
    MEMORY_TOOL_NAMES,
    CoreMemory,
    MemoryBlockState,
    MemoryToolError,
    core_memory_append,
    core_memory_replace,
    memory_finish_edits,
    memory_insert,
    memory_replace,
    memory_rethink,
    run_memory_tool,
)
from engram.store.models.blocks import DEFAULT_BLOCK_CHAR_LIMIT


def memory_with(*blocks: MemoryBlockState) -> CoreMemory:
    return CoreMemory(blocks)


def one_block(value: str, *, limit: int = 1000, read_only: bool = False) -> CoreMemory:
    return memory_with(MemoryBlockState("notes", value, limit=limit, read_only=read_only))


def value_of(memory: CoreMemory, label: str = "notes") -> str:
    block = memory.get(label)
    assert block is not None
    return block.value


def refusal(call: Any, *args: Any) -> str:
    with pytest.raises(MemoryToolError) as caught:
        call(*args)
    return caught.value.message


# -- CoreMemory ---------------------------------------------------------------


def test_blocks_are_listed_in_label_order_whatever_the_load_order() -> None:
    memory = memory_with(MemoryBlockState("persona", "p"), MemoryBlockState("human", "h"))
    assert memory.labels() == ("human", "persona")
    assert [block.label for block in memory.blocks()] == ["human", "persona"]
    assert memory.get("missing") is None


def test_duplicate_labels_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="two memory blocks are labelled 'x'"):
        memory_with(MemoryBlockState("x", ""), MemoryBlockState("x", ""))


def test_block_state_is_read_from_a_stored_block() -> None:
    class Row:
        label = "human"
        value = "Ana"
        char_limit = 50
        description = "the user"
        read_only = True

    assert MemoryBlockState.of(Row()) == MemoryBlockState("human", "Ana", 50, "the user", True)


def test_nothing_has_changed_after_loading() -> None:
    assert one_block("a").changed_labels() == ()


def test_changed_labels_names_edited_and_created_blocks_in_label_order() -> None:
    memory = memory_with(
        MemoryBlockState("b", "one"), MemoryBlockState("a", "two"), MemoryBlockState("c", "x")
    )
    core_memory_append(memory, "b", "more")
    memory_rethink(memory, "new", "fresh")
    core_memory_append(memory, "a", "more")
    assert memory.changed_labels() == ("a", "b", "new")
    assert memory.created_labels() == ("new",)


def test_rewriting_a_block_with_its_own_value_is_no_change() -> None:
    memory = one_block("same")
    memory_rethink(memory, "notes", "same")
    assert memory.changed_labels() == ()


def test_an_edit_reverted_within_the_run_is_no_change() -> None:
    memory = one_block("start")
    memory_rethink(memory, "notes", "other")
    memory_rethink(memory, "notes", "start")
    assert memory.changed_labels() == ()


def test_mark_persisted_takes_the_current_values_as_stored() -> None:
    memory = one_block("a")
    memory_rethink(memory, "notes", "b")
    memory_rethink(memory, "fresh", "c")
    memory.mark_persisted()
    assert memory.changed_labels() == ()
    assert memory.created_labels() == ()


def test_a_failed_edit_changes_nothing() -> None:
    memory = one_block("abc", limit=3)
    refusal(core_memory_append, memory, "notes", "d")
    assert value_of(memory) == "abc"
    assert memory.changed_labels() == ()


# -- refusals shared by every editing tool ------------------------------------

EDITS: list[tuple[str, dict[str, Any]]] = [
    ("core_memory_append", {"content": "x"}),
    ("core_memory_replace", {"old_content": "a", "new_content": "b"}),
    ("memory_replace", {"old_string": "a", "new_string": "b"}),
    ("memory_insert", {"new_string": "x"}),
    ("memory_rethink", {"new_memory": "x"}),
]


@pytest.mark.parametrize(("tool", "arguments"), EDITS)
def test_a_read_only_block_is_refused(tool: str, arguments: dict[str, Any]) -> None:
    memory = one_block("a", read_only=True)
    message = refusal(run_memory_tool, memory, tool, {"label": "notes", **arguments})
    assert message == "The memory block 'notes' is read-only; memory tools cannot change it."
    assert value_of(memory) == "a"


@pytest.mark.parametrize(
    ("tool", "arguments"), [edit for edit in EDITS if edit[0] != "memory_rethink"]
)
def test_an_unknown_label_is_refused_with_the_existing_ones(
    tool: str, arguments: dict[str, Any]
) -> None:
    memory = memory_with(MemoryBlockState("persona", "a"), MemoryBlockState("human", "a"))
    message = refusal(run_memory_tool, memory, tool, {"label": "nope", **arguments})
    assert (
        message == "There is no memory block labelled 'nope'. Existing labels: 'human', 'persona'."
    )


def test_an_unknown_label_in_an_empty_memory_says_there_is_none() -> None:
    message = refusal(core_memory_append, CoreMemory(), "notes", "x")
    assert message == "There is no memory block labelled 'notes'. Existing labels: none."


def test_null_bytes_never_reach_a_block() -> None:
    memory = one_block("a")
    assert core_memory_append(memory, "notes", "b\x00c") == "a\nbc"


# -- core_memory_append -------------------------------------------------------


def test_append_adds_a_new_line_and_returns_the_new_value() -> None:
    memory = one_block("Name: Ana")
    assert core_memory_append(memory, "notes", "Likes tea") == "Name: Ana\nLikes tea"
    assert value_of(memory) == "Name: Ana\nLikes tea"


def test_append_to_an_empty_block_adds_no_leading_newline() -> None:
    memory = one_block("")
    assert core_memory_append(memory, "notes", "first") == "first"


def test_append_keeps_unicode_intact() -> None:
    memory = one_block("Zoë")
    assert core_memory_append(memory, "notes", "日本語 🙂") == "Zoë\n日本語 🙂"


def test_append_up_to_exactly_the_limit_is_accepted() -> None:
    memory = one_block("abc", limit=7)
    assert core_memory_append(memory, "notes", "def") == "abc\ndef"


def test_append_one_over_the_limit_is_refused_with_size_and_limit() -> None:
    memory = one_block("abc", limit=7)
    assert refusal(core_memory_append, memory, "notes", "defg") == (
        "The edit was not made: block 'notes' would hold 8 characters, over its limit of 7. "
        "Shorten the text or remove something first."
    )


def test_the_limit_counts_characters_not_bytes() -> None:
    memory = one_block("é", limit=3)
    assert core_memory_append(memory, "notes", "日") == "é\n日"


# -- core_memory_replace ------------------------------------------------------


def test_replace_changes_every_occurrence() -> None:
    memory = one_block("cat, cat and dog")
    assert core_memory_replace(memory, "notes", "cat", "bird") == "bird, bird and dog"


def test_replace_with_empty_text_deletes() -> None:
    memory = one_block("keep drop keep")
    assert core_memory_replace(memory, "notes", " drop", "") == "keep keep"


def test_replace_of_missing_text_is_refused() -> None:
    memory = one_block("abc")
    assert refusal(core_memory_replace, memory, "notes", "xyz", "q") == (
        "The text 'xyz' was not found in memory block 'notes'; nothing was replaced."
    )


def test_replace_of_empty_text_is_refused() -> None:
    memory = one_block("abc")
    assert refusal(core_memory_replace, memory, "notes", "", "q") == (
        "old_content is empty; give the exact text to replace."
    )


def test_replace_enforces_the_limit() -> None:
    memory = one_block("aa", limit=4)
    assert core_memory_replace(memory, "notes", "a", "bb") == "bbbb"
    message = refusal(core_memory_replace, memory, "notes", "b", "cc")
    assert "would hold 8 characters, over its limit of 4" in message
    assert value_of(memory) == "bbbb"


def test_replace_matches_unicode() -> None:
    memory = one_block("café ☕ crème")
    assert core_memory_replace(memory, "notes", "☕", "🍵") == "café 🍵 crème"


# -- memory_replace -----------------------------------------------------------


def test_memory_replace_changes_the_single_occurrence() -> None:
    memory = one_block("Name: Ana\nCity: Oslo")
    assert memory_replace(memory, "notes", "Oslo", "Bergen") == "Name: Ana\nCity: Bergen"


def test_memory_replace_with_empty_new_string_deletes() -> None:
    memory = one_block("a\nremove me\nb")
    assert memory_replace(memory, "notes", "remove me\n", "") == "a\nb"


def test_memory_replace_of_missing_text_is_refused() -> None:
    memory = one_block("abc")
    assert refusal(memory_replace, memory, "notes", "xyz", "q") == (
        "No replacement was made: old_string 'xyz' does not appear verbatim "
        "in memory block 'notes'."
    )


def test_memory_replace_of_ambiguous_text_lists_the_lines() -> None:
    memory = one_block("tea\ncoffee\ntea and tea")
    assert refusal(memory_replace, memory, "notes", "tea", "juice") == (
        "No replacement was made: old_string 'tea' appears 3 times in memory block 'notes' "
        "(lines 1, 3). Include more of the surrounding text so that it matches only once."
    )
    assert value_of(memory) == "tea\ncoffee\ntea and tea"


def test_memory_replace_counts_overlapping_matches_as_ambiguous() -> None:
    memory = one_block("aaa")
    assert "appears 2 times" in refusal(memory_replace, memory, "notes", "aa", "b")


def test_memory_replace_of_empty_text_is_refused() -> None:
    assert refusal(memory_replace, one_block("abc"), "notes", "", "x") == (
        "old_string is empty; give the exact text to replace."
    )


@pytest.mark.parametrize("argument", ["old_string", "new_string"])
def test_memory_replace_refuses_line_number_prefixes(argument: str) -> None:
    memory = one_block("Name: Ana")
    strings = {"old_string": "Name: Ana", "new_string": "Name: Eva"}
    strings[argument] = "1→ " + strings[argument]
    message = refusal(memory_replace, memory, "notes", strings["old_string"], strings["new_string"])
    assert message == (
        f"{argument} contains a line-number prefix such as '3→'. Those numbers only "
        "appear in the view of the block; pass the text without them."
    )


def test_memory_replace_refuses_a_prefix_on_a_later_line() -> None:
    memory = one_block("a\nb")
    assert "line-number prefix" in refusal(memory_replace, memory, "notes", "a\n  2→b", "c")


def test_memory_replace_accepts_numbers_without_the_arrow() -> None:
    memory = one_block("1. tea")
    assert memory_replace(memory, "notes", "1. tea", "2. coffee") == "2. coffee"


def test_memory_replace_refuses_the_line_number_notice() -> None:
    memory = one_block("abc")
    message = refusal(memory_replace, memory, "notes", LINE_NUMBER_NOTICE + "\nabc", "x")
    assert message == (
        "old_string contains the note about line numbers, which is not part of the "
        "block; pass only the block's own text."
    )


def test_memory_replace_expands_tabs_as_the_reference_does() -> None:
    memory = one_block("a\tb\nc\td")
    assert memory_replace(memory, "notes", "c\td", "e") == "a       b\ne"


def test_memory_replace_enforces_the_limit_exactly() -> None:
    memory = one_block("abc", limit=5)
    assert memory_replace(memory, "notes", "b", "bbb") == "abbbc"
    assert "would hold 6 characters, over its limit of 5" in refusal(
        memory_replace, memory, "notes", "c", "cc"
    )


def test_memory_replace_handles_unicode() -> None:
    memory = one_block("Ünïcødé 🙂 text")
    assert memory_replace(memory, "notes", "🙂", "😀") == "Ünïcødé 😀 text"


# -- memory_insert --------------------------------------------------------------


@pytest.mark.parametrize(
    ("insert_line", "expected"),
    [
        (0, "new\none\ntwo\nthree"),
        (1, "one\nnew\ntwo\nthree"),
        (2, "one\ntwo\nnew\nthree"),
        (3, "one\ntwo\nthree\nnew"),
        (-1, "one\ntwo\nthree\nnew"),
    ],
)
def test_insert_puts_the_text_after_the_given_line(insert_line: int, expected: str) -> None:
    memory = one_block("one\ntwo\nthree")
    assert memory_insert(memory, "notes", "new", insert_line) == expected


def test_insert_defaults_to_the_end() -> None:
    assert memory_insert(one_block("a"), "notes", "b") == "a\nb"


def test_insert_of_several_lines() -> None:
    assert memory_insert(one_block("a\nd"), "notes", "b\nc", 1) == "a\nb\nc\nd"


@pytest.mark.parametrize("insert_line", [-1, 0])
def test_insert_into_an_empty_block_gives_just_the_text(insert_line: int) -> None:
    assert memory_insert(one_block(""), "notes", "only", insert_line) == "only"


@pytest.mark.parametrize(("insert_line", "lines"), [(4, 3), (-2, 3)])
def test_insert_out_of_range_is_refused(insert_line: int, lines: int) -> None:
    memory = one_block("one\ntwo\nthree")
    assert refusal(memory_insert, memory, "notes", "x", insert_line) == (
        f"insert_line {insert_line} is out of range: block 'notes' has {lines} lines, "
        "so use a number from 0 (the top) to 3, or -1 for the end."
    )


def test_insert_into_an_empty_block_at_line_one_is_refused() -> None:
    assert "has 0 lines" in refusal(memory_insert, one_block(""), "notes", "x", 1)


def test_insert_refuses_line_number_prefixes() -> None:
    assert "new_string contains a line-number prefix" in refusal(
        memory_insert, one_block("a"), "notes", "2→ b", -1
    )


def test_insert_enforces_the_limit_exactly() -> None:
    memory = one_block("ab", limit=5)
    assert memory_insert(memory, "notes", "cd", 0) == "cd\nab"
    assert "would hold 6 characters, over its limit of 5" in refusal(
        memory_insert, one_block("ab", limit=5), "notes", "cde", 0
    )


def test_insert_keeps_tabs_and_unicode() -> None:
    assert memory_insert(one_block("ä"), "notes", "\tß") == "ä\n\tß"


# -- memory_rethink -------------------------------------------------------------


def test_rethink_replaces_the_whole_value() -> None:
    memory = one_block("old\ntext")
    assert memory_rethink(memory, "notes", "brand new") == "brand new"
    assert value_of(memory) == "brand new"


def test_rethink_may_empty_a_block() -> None:
    assert memory_rethink(one_block("x"), "notes", "") == ""


def test_rethink_enforces_the_limit_exactly() -> None:
    memory = one_block("", limit=3)
    assert memory_rethink(memory, "notes", "xyz") == "xyz"
    assert refusal(memory_rethink, memory, "notes", "wxyz") == (
        "The edit was not made: block 'notes' would hold 4 characters, over its limit of 3. "
        "Shorten the text or remove something first."
    )


def test_rethink_of_an_unknown_label_creates_the_block() -> None:
    memory = one_block("a")
    assert memory_rethink(memory, "plans", "Visit Ålesund") == "Visit Ålesund"
    assert memory.get("plans") == MemoryBlockState(
        "plans", "Visit Ålesund", DEFAULT_BLOCK_CHAR_LIMIT, "", False
    )


def test_a_created_block_gets_the_memory_default_limit() -> None:
    memory = CoreMemory(default_limit=4)
    assert "over its limit of 4" in refusal(memory_rethink, memory, "plans", "12345")
    assert "plans" not in memory
    assert memory_rethink(memory, "plans", "1234") == "1234"


@pytest.mark.parametrize("label", ["", "  ", " padded", "x" * 201])
def test_rethink_refuses_to_create_a_block_with_a_bad_label(label: str) -> None:
    assert refusal(memory_rethink, CoreMemory(), label, "v") == (
        f"Cannot create a memory block labelled {label!r}: a label must be non-empty, "
        "at most 200 characters, without surrounding spaces."
    )


def test_rethink_refuses_line_number_prefixes() -> None:
    assert "new_memory contains a line-number prefix" in refusal(
        memory_rethink, one_block("a"), "notes", "1→ a"
    )


# -- memory_finish_edits --------------------------------------------------------


def test_finish_edits_changes_nothing() -> None:
    memory = one_block("a")
    assert memory_finish_edits(memory) == "Memory editing finished."
    assert memory.changed_labels() == ()


# -- dispatcher -----------------------------------------------------------------


def test_the_memory_tools_are_named_as_registered() -> None:
    names = MEMORY_TOOL_NAMES
    assert names == {
        "core_memory_append",
        "core_memory_replace",
        "memory_insert",
        "memory_replace",
        "memory_rethink",
        "memory_finish_edits",
    }
    assert names <= BASE_TOOLS.keys()


@pytest.mark.parametrize("name", sorted(MEMORY_TOOL_NAMES))
def test_each_tool_takes_exactly_the_registered_arguments(name: str) -> None:
    function = globals()[name]
    parameters = list(inspect.signature(function).parameters.values())[1:]
    schema = BASE_TOOLS[name].parameters
    assert [p.name for p in parameters] == list(schema["properties"])
    required = [p.name for p in parameters if p.default is inspect.Parameter.empty]
    assert required == schema["required"]


def test_dispatch_runs_the_named_tool() -> None:
    memory = one_block("one\ntwo")
    result = run_memory_tool(
        memory, "memory_insert", {"label": "notes", "new_string": "x", "insert_line": 1}
    )
    assert result == "one\nx\ntwo"


def test_dispatch_uses_defaults_for_absent_or_null_optionals() -> None:
    memory = one_block("a")
    assert run_memory_tool(memory, "memory_insert", {"label": "notes", "new_string": "b"}) == (
        "a\nb"
    )
    arguments = {"label": "notes", "new_string": "c", "insert_line": None}
    assert run_memory_tool(memory, "memory_insert", arguments) == "a\nb\nc"


def test_dispatch_ignores_arguments_the_tool_does_not_take() -> None:
    memory = one_block("a")
    arguments = {"label": "notes", "content": "b", "request_heartbeat": True}
    assert run_memory_tool(memory, "core_memory_append", arguments) == "a\nb"
    assert run_memory_tool(memory, "memory_finish_edits", {"anything": 1}) == (
        "Memory editing finished."
    )


@pytest.mark.parametrize("arguments", [{"label": "notes"}, {"label": "notes", "content": None}])
def test_dispatch_refuses_a_missing_argument(arguments: dict[str, Any]) -> None:
    message = refusal(run_memory_tool, one_block("a"), "core_memory_append", arguments)
    assert message == "The argument 'content' is required."


def test_dispatch_names_the_first_missing_argument_in_schema_order() -> None:
    message = refusal(run_memory_tool, one_block("a"), "memory_replace", {})
    assert message == "The argument 'label' is required."


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (3, "a number"),
        (1.5, "a number"),
        (True, "a boolean"),
        (["x"], "an array"),
        ({"a": 1}, "an object"),
    ],
)
def test_dispatch_refuses_a_non_string_text_argument(value: Any, kind: str) -> None:
    arguments = {"label": "notes", "new_memory": value}
    message = refusal(run_memory_tool, one_block("a"), "memory_rethink", arguments)
    assert message == f"The argument 'new_memory' must be a string, not {kind}."


@pytest.mark.parametrize(
    ("value", "kind"), [("2", "a string"), (1.0, "a number"), (False, "a boolean")]
)
def test_dispatch_refuses_a_non_integer_line(value: Any, kind: str) -> None:
    arguments = {"label": "notes", "new_string": "x", "insert_line": value}
    message = refusal(run_memory_tool, one_block("a"), "memory_insert", arguments)
    assert message == f"The argument 'insert_line' must be an integer, not {kind}."


def test_dispatch_refuses_a_tool_that_is_not_a_memory_tool() -> None:
    message = refusal(run_memory_tool, one_block("a"), "send_message", {"message": "hi"})
    assert message == "'send_message' is not a memory tool."
