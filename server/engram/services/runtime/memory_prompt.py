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
from dataclasses import dataclass
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
    files: str = "",
) -> str:
    """The whole system message: the prompt with the memory, tool rules, statistics and files.

    As in the reference, the sections together replace every
    ``{CORE_MEMORY}`` in the prompt, or follow the prompt after a blank line
    when it has none.  Empty sections (no tool rules, no statistics, no
    attached files) are left out rather than rendered as empty markup.
    """
    sections = [render_core_memory(memory, line_numbers=line_numbers)]
    optional = (render_tool_rules(tool_rule_lines), statistics, files)
    sections += [text for text in optional if text]
    memory_text = "\n\n".join(sections)
    if CORE_MEMORY_PLACEHOLDER in system_prompt:
        return system_prompt.replace(CORE_MEMORY_PLACEHOLDER, memory_text)
    prompt = system_prompt.rstrip()
    return f"{prompt}\n\n{memory_text}" if prompt else memory_text


# --- files of attached data sources ---------------------------------------------------------

_FILES_INTRO = (
    "Files of the data sources attached to you. Open a file with open_files to see its "
    "lines here (numbered; the numbers are not part of the file); grep_files and "
    "semantic_search_files search every file listed."
)


@dataclass(frozen=True)
class FileWindow:
    """The lines of an open file in view: ``lines`` start at line ``first_line`` (1-based)."""

    first_line: int
    lines: tuple[str, ...]
    total_lines: int
    cut: bool  # the window stops early at the per-file character limit


@dataclass(frozen=True)
class FileEntry:
    """A file of an attached source as the prompt lists it; ``window`` is set when open."""

    name: str  # "<source>/<file>"
    ready: bool  # its text is extracted: it can be opened and searched by text
    window: FileWindow | None = None


def render_files(files: Sequence[FileEntry], *, more: int = 0) -> str:
    """The attached files, open or closed, then each open file's lines in view.

    Empty when the agent has no attached file.  ``more`` counts files left
    out of the list (the list has a cap); they can still be opened by name.
    """
    if not files and not more:
        return ""
    lines = ["<files>", _FILES_INTRO]
    lines += [f"- {entry.name} ({_file_state(entry)})" for entry in files]
    if more:
        lines.append(f"- ... and {more} more")
    for entry in files:
        if entry.window is not None:
            lines += _render_window(entry.name, entry.window)
    lines.append("</files>")
    return "\n".join(lines)


def _file_state(entry: FileEntry) -> str:
    if entry.window is not None:
        return f"open, {_line_range(entry.window)}"
    return "closed" if entry.ready else "not ready yet"


def _line_range(window: FileWindow) -> str:
    if not window.lines:
        return f"no lines in view of {window.total_lines}"
    last = window.first_line + len(window.lines) - 1
    return f"lines {window.first_line}-{last} of {window.total_lines}"


def _render_window(name: str, window: FileWindow) -> list[str]:
    numbered = [
        f"{number}→ {line}" for number, line in enumerate(window.lines, start=window.first_line)
    ]
    tail = ["(the view stops here: the character limit per open file was reached)"]
    return [
        f"<open_file name={json.dumps(name, ensure_ascii=False)}>",
        f"{_line_range(window)}:",
        *numbered,
        *(tail if window.cut else []),
        "</open_file>",
    ]
