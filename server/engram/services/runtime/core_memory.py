"""An agent's core memory during a run, and the built-in tools that edit it.

The loop loads the agent's blocks into a :class:`CoreMemory`, lets the model
edit that working copy through the memory tools, and afterwards persists only
the blocks named by :meth:`CoreMemory.changed_labels`.  Everything here is
pure and synchronous so each tool's semantics can be tested without a
database.

A tool never crashes the loop over a bad request from the model: it raises
:class:`MemoryToolError`, whose message goes back to the model as the tool's
error so it can correct itself.

Limits are enforced, as in the blocks service: an edit that would make a
block longer than its limit is refused with the size and the limit named,
never truncated.  Read-only blocks can only be changed through the API.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from engram.store.models.blocks import DEFAULT_BLOCK_CHAR_LIMIT

MAX_LABEL_LENGTH = 200

# The line-numbered view prefixes each line of a block with "<n>→ ".  Text the
# model writes must not carry those prefixes: they would end up in the block.
LINE_NUMBER_PREFIX = re.compile(r"^[ \t]*\d+→[ \t]*", re.MULTILINE)
LINE_NUMBER_NOTICE = (
    "Note: the numbers before each line (such as '4→ ') only help you locate lines; "
    "they are not part of the text, so leave them out of memory tool arguments."
)


class MemoryToolError(Exception):
    """A memory tool refused the model's request; the message is for the model."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BlockLike(Protocol):
    """What :meth:`MemoryBlockState.of` needs from a stored block (e.g. the ORM row)."""

    @property
    def label(self) -> str: ...
    @property
    def value(self) -> str: ...
    @property
    def char_limit(self) -> int: ...
    @property
    def description(self) -> str: ...
    @property
    def read_only(self) -> bool: ...


@dataclass(frozen=True)
class MemoryBlockState:
    """One block as the runtime sees it.

    Frozen so that every change goes through :class:`CoreMemory`, which is
    what lets it report the changed blocks.
    """

    label: str
    value: str
    limit: int = DEFAULT_BLOCK_CHAR_LIMIT
    description: str = ""
    read_only: bool = False

    @classmethod
    def of(cls, block: BlockLike) -> MemoryBlockState:
        """The working state of a stored block."""
        return cls(
            label=block.label,
            value=block.value,
            limit=block.char_limit,
            description=block.description,
            read_only=block.read_only,
        )


class CoreMemory:
    """The blocks attached to an agent, keyed by label, remembering their loaded values.

    Blocks are always listed in label order, whatever order they were loaded
    in, so the rendered memory (and hence the system message) only changes
    when the memory itself does.
    """

    def __init__(
        self,
        blocks: Iterable[MemoryBlockState] = (),
        *,
        default_limit: int = DEFAULT_BLOCK_CHAR_LIMIT,
    ) -> None:
        self._blocks: dict[str, MemoryBlockState] = {}
        for block in blocks:
            if block.label in self._blocks:
                raise ValueError(f"two memory blocks are labelled {block.label!r}")
            self._blocks[block.label] = block
        self._loaded: dict[str, str] = {label: block.value for label, block in self._blocks.items()}
        self.default_limit = default_limit  # for blocks memory_rethink creates

    def labels(self) -> tuple[str, ...]:
        return tuple(sorted(self._blocks))

    def blocks(self) -> tuple[MemoryBlockState, ...]:
        return tuple(self._blocks[label] for label in self.labels())

    def get(self, label: str) -> MemoryBlockState | None:
        return self._blocks.get(label)

    def __contains__(self, label: object) -> bool:
        return label in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def changed_labels(self) -> tuple[str, ...]:
        """Blocks whose value differs from the loaded one (or that are new), in label order.

        A tool that rewrites a block with its current value changes nothing
        and so needs no write.
        """
        return tuple(
            label for label in self.labels() if self._loaded.get(label) != self._blocks[label].value
        )

    def created_labels(self) -> tuple[str, ...]:
        """Blocks created during the run (by memory_rethink); they need inserting, not updating."""
        return tuple(label for label in self.labels() if label not in self._loaded)

    def mark_persisted(self) -> None:
        """Take the current values as the stored ones, once the loop has saved them."""
        self._loaded = {label: block.value for label, block in self._blocks.items()}

    def set_value(self, label: str, value: str) -> None:
        """Store a new value for an existing block; the tools check it beforehand."""
        self._blocks[label] = replace(self._blocks[label], value=value)

    def add(self, block: MemoryBlockState) -> None:
        """Add a block created during the run."""
        if block.label in self._blocks:
            raise ValueError(f"a memory block is already labelled {block.label!r}")
        self._blocks[block.label] = block


# -- checks shared by the tools ------------------------------------------------


def _editable(memory: CoreMemory, label: str) -> MemoryBlockState:
    """The block the model wants to change, or the reason it cannot."""
    block = memory.get(label)
    if block is None:
        known = ", ".join(repr(name) for name in memory.labels()) or "none"
        raise MemoryToolError(
            f"There is no memory block labelled {label!r}. Existing labels: {known}."
        )
    if block.read_only:
        raise MemoryToolError(
            f"The memory block {label!r} is read-only; memory tools cannot change it."
        )
    return block


def _clean(text: str) -> str:
    """Drop null bytes, which neither PostgreSQL text nor a prompt can carry."""
    return text.replace("\x00", "")


def _reject_view_artifacts(text: str, argument: str) -> None:
    """Refuse text copied from the line-numbered view, prefixes or notice included."""
    if LINE_NUMBER_PREFIX.search(text):
        raise MemoryToolError(
            f"{argument} contains a line-number prefix such as '3→'. Those numbers only "
            "appear in the view of the block; pass the text without them."
        )
    if LINE_NUMBER_NOTICE in text:
        raise MemoryToolError(
            f"{argument} contains the note about line numbers, which is not part of the "
            "block; pass only the block's own text."
        )


def _store(memory: CoreMemory, block: MemoryBlockState, value: str) -> str:
    """Write the new value if it fits the block's limit; return it as the tool result."""
    _check_fits(block.label, block.limit, value)
    memory.set_value(block.label, value)
    return value


def _check_fits(label: str, limit: int, value: str) -> None:
    if len(value) > limit:
        raise MemoryToolError(
            f"The edit was not made: block {label!r} would hold {len(value)} characters, "
            f"over its limit of {limit}. Shorten the text or remove something first."
        )


def _occurrences(haystack: str, needle: str) -> list[int]:
    """Start offsets of every match, overlapping ones included (each one is ambiguous)."""
    starts: list[int] = []
    start = haystack.find(needle)
    while start != -1:
        starts.append(start)
        start = haystack.find(needle, start + 1)
    return starts


def _line_numbers(text: str, offsets: Iterable[int]) -> list[int]:
    """The 1-based lines on which the given offsets fall, each listed once."""
    return sorted({text.count("\n", 0, offset) + 1 for offset in offsets})


# -- the tools ------------------------------------------------------------------


def core_memory_append(memory: CoreMemory, label: str, content: str) -> str:
    """Add ``content`` on a new line at the end of the block; return the new value.

    As in the reference the separator is a newline, except that an empty
    block simply becomes ``content`` (the reference would start it with a
    blank line, which no one wants).
    """
    block = _editable(memory, label)
    content = _clean(content)
    value = f"{block.value}\n{content}" if block.value else content
    return _store(memory, block, value)


def core_memory_replace(memory: CoreMemory, label: str, old_content: str, new_content: str) -> str:
    """Replace every occurrence of ``old_content``; return the new value.

    An empty ``old_content`` is refused: it "occurs" between every two
    characters, so replacing it would scatter the new text through the block.
    """
    block = _editable(memory, label)
    old_content, new_content = _clean(old_content), _clean(new_content)
    if not old_content:
        raise MemoryToolError("old_content is empty; give the exact text to replace.")
    if old_content not in block.value:
        raise MemoryToolError(
            f"The text {old_content!r} was not found in memory block {label!r}; "
            "nothing was replaced."
        )
    return _store(memory, block, block.value.replace(old_content, new_content))


def memory_replace(memory: CoreMemory, label: str, old_string: str, new_string: str) -> str:
    """Replace the single occurrence of ``old_string``; return the new value.

    The text must occur exactly once (overlapping matches count), so the
    model cannot change a place it did not mean.  As in the reference, tabs
    are expanded to spaces in both strings and in the block before matching,
    and text carrying line-number prefixes from the numbered view is
    refused.  An empty ``old_string`` is refused; ``new_string`` may be
    empty, which deletes the text.
    """
    block = _editable(memory, label)
    old_string, new_string = _clean(old_string), _clean(new_string)
    _reject_view_artifacts(old_string, "old_string")
    _reject_view_artifacts(new_string, "new_string")
    if not old_string:
        raise MemoryToolError("old_string is empty; give the exact text to replace.")
    old_string, new_string = old_string.expandtabs(), new_string.expandtabs()
    current = block.value.expandtabs()
    starts = _occurrences(current, old_string)
    if not starts:
        raise MemoryToolError(
            f"No replacement was made: old_string {old_string!r} does not appear verbatim "
            f"in memory block {label!r}."
        )
    if len(starts) > 1:
        lines = ", ".join(str(line) for line in _line_numbers(current, starts))
        raise MemoryToolError(
            f"No replacement was made: old_string {old_string!r} appears {len(starts)} "
            f"times in memory block {label!r} (lines {lines}). Include more of the "
            "surrounding text so that it matches only once."
        )
    start = starts[0]
    value = current[:start] + new_string + current[start + len(old_string) :]
    return _store(memory, block, value)


def memory_insert(memory: CoreMemory, label: str, new_string: str, insert_line: int = -1) -> str:
    """Insert ``new_string`` as whole lines after line ``insert_line``; return the new value.

    Lines are the block split on newlines, numbered from 1 as in the
    numbered view.  ``0`` puts the text at the top, ``n`` (the line count)
    and ``-1`` at the end; anything else is an error.  An empty block counts
    as zero lines, so inserting into it gives exactly ``new_string`` (the
    reference would leave a stray empty line).
    """
    block = _editable(memory, label)
    new_string = _clean(new_string)
    _reject_view_artifacts(new_string, "new_string")
    lines = block.value.split("\n") if block.value else []
    if insert_line == -1:
        insert_line = len(lines)
    if not 0 <= insert_line <= len(lines):
        raise MemoryToolError(
            f"insert_line {insert_line} is out of range: block {label!r} has {len(lines)} "
            f"lines, so use a number from 0 (the top) to {len(lines)}, or -1 for the end."
        )
    value = "\n".join([*lines[:insert_line], *new_string.split("\n"), *lines[insert_line:]])
    return _store(memory, block, value)


def memory_rethink(memory: CoreMemory, label: str, new_memory: str) -> str:
    """Replace the block's whole value with ``new_memory``; return it.

    As in the reference, an unknown label creates a new block (with the
    default limit and no description); the loop finds it in
    :meth:`CoreMemory.created_labels`.  Line-number prefixes are refused as
    in memory_replace.
    """
    block = _editable(memory, label) if label in memory else None
    new_memory = _clean(new_memory)
    _reject_view_artifacts(new_memory, "new_memory")
    if block is None:
        return _create(memory, label, new_memory)
    return _store(memory, block, new_memory)


def _create(memory: CoreMemory, label: str, value: str) -> str:
    if not label or label != label.strip() or len(label) > MAX_LABEL_LENGTH:
        raise MemoryToolError(
            f"Cannot create a memory block labelled {label!r}: a label must be non-empty, "
            f"at most {MAX_LABEL_LENGTH} characters, without surrounding spaces."
        )
    _check_fits(label, memory.default_limit, value)
    memory.add(MemoryBlockState(label=label, value=value, limit=memory.default_limit))
    return value


def memory_finish_edits(memory: CoreMemory) -> str:
    """Changes nothing: it tells the loop (a terminal tool) that memory work is done."""
    return "Memory editing finished."


# -- dispatch -----------------------------------------------------------------------


@dataclass(frozen=True)
class _ToolSpec:
    """How to read one tool's arguments: required strings, optional ints with defaults."""

    function: Callable[..., str]
    strings: tuple[str, ...] = ()
    optional_ints: tuple[tuple[str, int], ...] = ()


_TOOLS: dict[str, _ToolSpec] = {
    "core_memory_append": _ToolSpec(core_memory_append, ("label", "content")),
    "core_memory_replace": _ToolSpec(core_memory_replace, ("label", "old_content", "new_content")),
    "memory_replace": _ToolSpec(memory_replace, ("label", "old_string", "new_string")),
    "memory_insert": _ToolSpec(memory_insert, ("label", "new_string"), (("insert_line", -1),)),
    "memory_rethink": _ToolSpec(memory_rethink, ("label", "new_memory")),
    "memory_finish_edits": _ToolSpec(memory_finish_edits),
}

MEMORY_TOOL_NAMES: frozenset[str] = frozenset(_TOOLS)


def run_memory_tool(memory: CoreMemory, tool_name: str, arguments: Mapping[str, Any]) -> str:
    """Check a memory tool call's arguments and run it; return the result for the model.

    Arguments the tool does not take are ignored (the loop may add its own,
    such as ``request_heartbeat``); an optional argument sent as null takes
    its default.
    """
    spec = _TOOLS.get(tool_name)
    if spec is None:
        raise MemoryToolError(f"{tool_name!r} is not a memory tool.")
    kwargs: dict[str, Any] = {name: _string_argument(arguments, name) for name in spec.strings}
    for name, default in spec.optional_ints:
        kwargs[name] = _int_argument(arguments, name, default)
    return spec.function(memory, **kwargs)


def _string_argument(arguments: Mapping[str, Any], name: str) -> str:
    if name not in arguments or arguments[name] is None:
        raise MemoryToolError(f"The argument {name!r} is required.")
    value = arguments[name]
    if not isinstance(value, str):
        raise MemoryToolError(f"The argument {name!r} must be a string, not {_json_type(value)}.")
    return value


def _int_argument(arguments: Mapping[str, Any], name: str, default: int) -> int:
    value = arguments.get(name)
    if value is None:
        return default
    # bool is an int in Python but never a line number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise MemoryToolError(f"The argument {name!r} must be an integer, not {_json_type(value)}.")
    return value


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, as the model wrote it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
