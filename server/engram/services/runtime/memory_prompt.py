"""The memory part of an agent's system message.

The system message is the agent's prompt plus a rendering of its core
memory, the rules on its tools and a few statistics about its other memory.
The loop rebuilds it only when that text would change, so the rendering is
deterministic: it reads no clock and no settings, blocks come in label order,
and every time is an argument.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo

from engram.services.runtime.core_memory import LINE_NUMBER_NOTICE, CoreMemory, MemoryBlockState

CORE_MEMORY_PLACEHOLDER = "{CORE_MEMORY}"

_MEMORY_INTRO = (
    "These blocks are your core memory. You see them on every turn; "
    "change them only through your memory tools."
)
_NO_BLOCKS = "You have no core memory blocks."
_TOOL_RULES_INTRO = "Follow these rules when you choose which tool to call:"
_READ_ONLY = "<read_only>Only people can change this block; memory tools cannot.</read_only>"


def render_core_memory(memory: CoreMemory, *, line_numbers: bool = False) -> str:
    """Every block with its purpose, size, limit, read-only status and text.

    With ``line_numbers`` each line of a block's text is shown as ``<n>→ line``
    (with a note saying the numbers are not part of the text), which lets the
    model name lines for memory_insert; the memory tools refuse text that
    still carries those prefixes.
    """
    if not len(memory):
        return "\n".join(["<core_memory>", _NO_BLOCKS, "</core_memory>"])
    intro = [_MEMORY_INTRO, LINE_NUMBER_NOTICE] if line_numbers else [_MEMORY_INTRO]
    blocks = [_render_block(block, line_numbers=line_numbers) for block in memory.blocks()]
    return "\n".join(["<core_memory>", *intro, "", "\n\n".join(blocks), "</core_memory>"])


def _render_block(block: MemoryBlockState, *, line_numbers: bool) -> str:
    # A JSON string is a valid quoted attribute for any label, quotes included.
    lines = [f"<block label={json.dumps(block.label, ensure_ascii=False)}>"]
    if block.description:
        lines += ["<purpose>", block.description, "</purpose>"]
    lines.append(f"<size>{len(block.value)} of {block.limit} characters used</size>")
    if block.read_only:
        lines.append(_READ_ONLY)
    lines += ["<text>", *_text_lines(block.value, line_numbers=line_numbers), "</text>", "</block>"]
    return "\n".join(lines)


def _text_lines(value: str, *, line_numbers: bool) -> list[str]:
    """The value's lines, numbered from 1 if asked; an empty value has none."""
    lines = value.split("\n") if value else []
    if not line_numbers:
        return lines
    return [f"{number}→ {line}" for number, line in enumerate(lines, start=1)]


def render_tool_rules(tool_rule_lines: Sequence[str]) -> str:
    """The tool-rule section, one bullet per rule; empty when there is no rule."""
    rules = [line.strip() for line in tool_rule_lines if line.strip()]
    if not rules:
        return ""
    bullets = [f"- {rule}" for rule in rules]
    return "\n".join(["<tool_rules>", _TOOL_RULES_INTRO, *bullets, "</tool_rules>"])


def render_memory_statistics(
    *,
    recall_messages: int,
    archival_passages: int,
    last_memory_change: datetime | None,
    archive_tags: Sequence[str] = (),
    timezone: tzinfo = UTC,
) -> str:
    """What the agent has outside its context window, and when its memory last changed.

    The counts tell the model whether searching its history or archive can
    find anything.  ``last_memory_change`` is shown in ``timezone`` (the
    agent's); a naive time is taken as UTC, which is how the store keeps
    times.  Tags are listed sorted, without duplicates, and only when any
    exist.
    """
    lines = [
        "<memory_statistics>",
        f"Messages in your conversation history (recall memory): {recall_messages}",
        f"Passages in your archival memory: {archival_passages}",
    ]
    if archive_tags:
        lines.append(f"Tags used in archival memory: {', '.join(sorted(set(archive_tags)))}")
    lines.append(f"Core memory last changed: {_format_time(last_memory_change, timezone)}")
    lines.append("</memory_statistics>")
    return "\n".join(lines)


def _format_time(when: datetime | None, timezone: tzinfo) -> str:
    if when is None:
        return "never"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(timezone).strftime("%Y-%m-%d %H:%M:%S %Z")


def compile_system_message(
    system_prompt: str,
    memory: CoreMemory,
    tool_rule_lines: Sequence[str],
    statistics: str,
    *,
    line_numbers: bool = False,
) -> str:
    """The whole system message: the prompt with the memory, tool rules and statistics.

    As in the reference, the three sections together replace every
    ``{CORE_MEMORY}`` in the prompt, or follow the prompt after a blank line
    when it has none.  Empty sections (no tool rules, no statistics) are
    left out rather than rendered as empty markup.
    """
    sections = [render_core_memory(memory, line_numbers=line_numbers)]
    sections += [text for text in (render_tool_rules(tool_rule_lines), statistics) if text]
    memory_text = "\n\n".join(sections)
    if CORE_MEMORY_PLACEHOLDER in system_prompt:
        return system_prompt.replace(CORE_MEMORY_PLACEHOLDER, memory_text)
    prompt = system_prompt.rstrip()
    return f"{prompt}\n\n{memory_text}" if prompt else memory_text
