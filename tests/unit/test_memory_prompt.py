"""Rendering core memory into the system message.

The loop compares compiled system messages to decide whether to rebuild, so
the renderings are pinned down as exact text.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from engram.services.runtime.core_memory import (
    LINE_NUMBER_NOTICE,
    CoreMemory,
    MemoryBlockState,
    memory_rethink,
)
from engram.services.runtime.memory_prompt import (
    compile_system_message,
    render_core_memory,
    render_memory_statistics,
    render_tool_rules,
)

INTRO = (
    "These blocks are your core memory. You see them on every turn; "
    "change them only through your memory tools."
)
READ_ONLY = "<read_only>Only people can change this block; memory tools cannot.</read_only>"
EMPTY_MEMORY = "<core_memory>\nYou have no core memory blocks.\n</core_memory>"


def two_blocks() -> CoreMemory:
    return CoreMemory(
        [
            MemoryBlockState("persona", "I am Sam.\nI like jazz.", 500, "Who you are.", True),
            MemoryBlockState("human", "Name: Zoë 🙂", 100, "The person you talk with."),
        ]
    )


TWO_BLOCKS = "\n".join(
    [
        "<core_memory>",
        INTRO,
        "",
        '<block label="human">',
        "<purpose>",
        "The person you talk with.",
        "</purpose>",
        "<size>11 of 100 characters used</size>",
        "<text>",
        "Name: Zoë 🙂",
        "</text>",
        "</block>",
        "",
        '<block label="persona">',
        "<purpose>",
        "Who you are.",
        "</purpose>",
        "<size>22 of 500 characters used</size>",
        READ_ONLY,
        "<text>",
        "I am Sam.",
        "I like jazz.",
        "</text>",
        "</block>",
        "</core_memory>",
    ]
)


# -- render_core_memory ---------------------------------------------------------


def test_an_empty_memory_says_there_are_no_blocks() -> None:
    assert render_core_memory(CoreMemory()) == EMPTY_MEMORY


def test_blocks_are_rendered_in_label_order_with_purpose_size_and_marker() -> None:
    assert render_core_memory(two_blocks()) == TWO_BLOCKS


def test_only_read_only_blocks_carry_the_marker() -> None:
    rendered = render_core_memory(two_blocks())
    assert rendered.count(READ_ONLY) == 1
    assert rendered.index(READ_ONLY) > rendered.index('<block label="persona">')


def test_a_block_without_description_or_value() -> None:
    memory = CoreMemory([MemoryBlockState("scratch", "", 10)])
    assert render_core_memory(memory) == "\n".join(
        [
            "<core_memory>",
            INTRO,
            "",
            '<block label="scratch">',
            "<size>0 of 10 characters used</size>",
            "<text>",
            "</text>",
            "</block>",
            "</core_memory>",
        ]
    )


def test_a_label_with_quotes_stays_a_valid_attribute() -> None:
    memory = CoreMemory([MemoryBlockState('say "hi"', "x", 5)])
    assert '<block label="say \\"hi\\"">' in render_core_memory(memory)


def test_line_numbered_view_numbers_each_line_and_explains_the_numbers() -> None:
    memory = CoreMemory([MemoryBlockState("notes", "one\n\nthree", 50)])
    assert render_core_memory(memory, line_numbers=True) == "\n".join(
        [
            "<core_memory>",
            INTRO,
            LINE_NUMBER_NOTICE,
            "",
            '<block label="notes">',
            "<size>10 of 50 characters used</size>",
            "<text>",
            "1→ one",
            "2→ ",
            "3→ three",
            "</text>",
            "</block>",
            "</core_memory>",
        ]
    )


def test_rendering_follows_edits() -> None:
    memory = two_blocks()
    memory_rethink(memory, "human", "Name: Eva")
    rendered = render_core_memory(memory)
    assert "<size>9 of 100 characters used</size>\n<text>\nName: Eva\n</text>" in rendered


def test_rendering_does_not_depend_on_load_order() -> None:
    blocks = list(two_blocks().blocks())
    assert render_core_memory(CoreMemory(reversed(blocks))) == render_core_memory(
        CoreMemory(blocks)
    )


# -- render_tool_rules ----------------------------------------------------------


def test_tool_rules_are_bulleted_and_blank_lines_dropped() -> None:
    assert render_tool_rules(["Call a first.", "  ", "b ends the turn. "]) == (
        "<tool_rules>\n"
        "Follow these rules when you choose which tool to call:\n"
        "- Call a first.\n"
        "- b ends the turn.\n"
        "</tool_rules>"
    )


def test_no_tool_rules_render_as_nothing() -> None:
    assert render_tool_rules([]) == ""
    assert render_tool_rules(["", " "]) == ""


# -- render_memory_statistics ---------------------------------------------------


def test_statistics_with_a_change_time_in_utc() -> None:
    text = render_memory_statistics(
        recall_messages=42,
        archival_passages=7,
        last_memory_change=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC),
    )
    assert text == (
        "<memory_statistics>\n"
        "Messages in your conversation history (recall memory): 42\n"
        "Passages in your archival memory: 7\n"
        "Core memory last changed: 2025-03-04 05:06:07 UTC\n"
        "</memory_statistics>"
    )


def test_statistics_list_archive_tags_sorted_once() -> None:
    text = render_memory_statistics(
        recall_messages=0,
        archival_passages=3,
        last_memory_change=None,
        archive_tags=["work", "home", "work"],
    )
    assert text == (
        "<memory_statistics>\n"
        "Messages in your conversation history (recall memory): 0\n"
        "Passages in your archival memory: 3\n"
        "Tags used in archival memory: home, work\n"
        "Core memory last changed: never\n"
        "</memory_statistics>"
    )


def test_statistics_show_the_time_in_the_agents_timezone() -> None:
    text = render_memory_statistics(
        recall_messages=1,
        archival_passages=0,
        last_memory_change=datetime(2025, 1, 1, 12, 0, tzinfo=UTC),
        timezone=ZoneInfo("Europe/Oslo"),
    )
    assert "Core memory last changed: 2025-01-01 13:00:00 CET\n" in text


def test_a_naive_time_is_taken_as_utc() -> None:
    naive = render_memory_statistics(
        recall_messages=1, archival_passages=0, last_memory_change=datetime(2025, 1, 1, 12, 0)
    )
    shifted = render_memory_statistics(
        recall_messages=1,
        archival_passages=0,
        last_memory_change=datetime(2025, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
    )
    assert "Core memory last changed: 2025-01-01 12:00:00 UTC\n" in naive
    assert naive == shifted


# -- compile_system_message -----------------------------------------------------

STATS = "<memory_statistics>\nsome numbers\n</memory_statistics>"
RULES = (
    "<tool_rules>\n"
    "Follow these rules when you choose which tool to call:\n"
    "- Call search first.\n"
    "</tool_rules>"
)


def test_memory_is_appended_after_a_prompt_without_placeholder() -> None:
    message = compile_system_message("You are helpful.\n\n", CoreMemory(), [], "")
    assert message == "You are helpful.\n\n" + EMPTY_MEMORY


def test_the_placeholder_is_replaced_in_place() -> None:
    prompt = "Intro.\n{CORE_MEMORY}\nOutro with {braces}."
    message = compile_system_message(prompt, CoreMemory(), [], "")
    assert message == "Intro.\n" + EMPTY_MEMORY + "\nOutro with {braces}."


def test_rules_and_statistics_follow_the_memory_at_the_placeholder() -> None:
    prompt = "Before\n{CORE_MEMORY}\nAfter"
    message = compile_system_message(prompt, two_blocks(), ["Call search first."], STATS)
    assert message == f"Before\n{TWO_BLOCKS}\n\n{RULES}\n\n{STATS}\nAfter"


def test_rules_and_statistics_follow_appended_memory() -> None:
    message = compile_system_message("Prompt", two_blocks(), ["Call search first."], STATS)
    assert message == f"Prompt\n\n{TWO_BLOCKS}\n\n{RULES}\n\n{STATS}"


def test_empty_sections_are_omitted() -> None:
    assert compile_system_message("P", CoreMemory(), [], "") == f"P\n\n{EMPTY_MEMORY}"
    assert compile_system_message("P", CoreMemory(), [" "], STATS) == (
        f"P\n\n{EMPTY_MEMORY}\n\n{STATS}"
    )
    assert compile_system_message("P", CoreMemory(), ["Call search first."], "") == (
        f"P\n\n{EMPTY_MEMORY}\n\n{RULES}"
    )


def test_an_empty_prompt_gives_just_the_memory() -> None:
    assert compile_system_message("", CoreMemory(), [], "") == EMPTY_MEMORY


def test_placeholder_text_inside_a_block_is_not_substituted() -> None:
    memory = CoreMemory([MemoryBlockState("notes", "literal {CORE_MEMORY}", 100)])
    message = compile_system_message("{CORE_MEMORY}", memory, [], "")
    assert message.count("{CORE_MEMORY}") == 1
    assert "<text>\nliteral {CORE_MEMORY}\n</text>" in message


def test_line_numbers_reach_the_compiled_message() -> None:
    memory = CoreMemory([MemoryBlockState("notes", "a", 10)])
    message = compile_system_message("P", memory, [], "", line_numbers=True)
    assert "<text>\n1→ a\n</text>" in message
    assert LINE_NUMBER_NOTICE in message


def test_compiling_is_deterministic_and_tracks_changes() -> None:
    def compiled(memory: CoreMemory) -> str:
        statistics = render_memory_statistics(
            recall_messages=3,
            archival_passages=1,
            last_memory_change=datetime(2025, 1, 1, tzinfo=UTC),
        )
        return compile_system_message("Prompt {CORE_MEMORY}", memory, ["r"], statistics)

    first = two_blocks()
    assert compiled(first) == compiled(two_blocks())
    before = compiled(first)
    memory_rethink(first, "human", "Name: Eva")
    assert compiled(first) != before
