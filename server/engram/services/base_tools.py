"""The built-in tools every organization has, and which ones each agent type gets.

Their behaviour lives in the agent runtime; here are the names, kinds and
the schemas the model sees.  They are registered once per organization, the
first time an agent asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from engram.store.models import Tool

CORE = "core"
MEMORY = "memory"

# The file tools' limits (engram.services.file_tools imports this module, so they live here).
MAX_OPEN_FILES = 5
GREP_PAGE_SIZE = 20


@dataclass(frozen=True)
class BaseTool:
    name: str
    kind: str
    description: str
    parameters: dict[str, Any]

    @property
    def json_schema(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


def _params(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


_STR = {"type": "string"}

BASE_TOOLS: dict[str, BaseTool] = {
    tool.name: tool
    for tool in (
        BaseTool(
            "send_message",
            CORE,
            "Say something to the user. This is the only way the user sees your words.",
            _params(["message"], message={**_STR, "description": "What to tell the user."}),
        ),
        BaseTool(
            "conversation_search",
            MEMORY,
            "Search the whole past conversation, including what is no longer in view.",
            _params(
                [],
                query={**_STR, "description": "Words to look for."},
                roles={
                    "type": "array",
                    "items": {"type": "string", "enum": ["assistant", "user", "tool"]},
                    "description": "Only messages from these roles.",
                },
                limit={"type": "integer", "description": "At most this many results (default 5)."},
                start_date={**_STR, "description": "Only messages on or after this ISO date."},
                end_date={**_STR, "description": "Only messages on or before this ISO date."},
            ),
        ),
        BaseTool(
            "archival_memory_insert",
            MEMORY,
            "Save a piece of text to your long-term archive, where it stays after it leaves "
            "your context and can be found later by its meaning with archival_memory_search. "
            "Write it so that it makes sense on its own.",
            _params(
                ["content"],
                content={**_STR, "description": "The text to keep."},
                tags={
                    "type": "array",
                    "items": _STR,
                    "description": "Labels to find it by later (optional).",
                },
            ),
        ),
        BaseTool(
            "archival_memory_search",
            MEMORY,
            "Look up your long-term archive by meaning: returns the saved texts closest to the "
            "query, best first, with when they were saved and their tags.",
            _params(
                ["query"],
                query={**_STR, "description": "What you are looking for, in plain words."},
                tags={
                    "type": "array",
                    "items": _STR,
                    "description": "Only texts with these tags.",
                },
                tag_match_mode={
                    **_STR,
                    "enum": ["any", "all"],
                    "description": "'any' (default): at least one of the tags; 'all': every tag.",
                },
                top_k={
                    "type": "integer",
                    "description": "At most this many results (default 5).",
                },
                start_datetime={
                    **_STR,
                    "description": "Only texts saved at or after this ISO date or time.",
                },
                end_datetime={
                    **_STR,
                    "description": "Only texts saved at or before this ISO date or time.",
                },
            ),
        ),
        BaseTool(
            "core_memory_append",
            MEMORY,
            "Add text on a new line at the end of a memory block.",
            _params(
                ["label", "content"],
                label={**_STR, "description": "The block to change."},
                content={**_STR, "description": "The text to add."},
            ),
        ),
        BaseTool(
            "core_memory_replace",
            MEMORY,
            "Replace every occurrence of some text in a memory block.",
            _params(
                ["label", "old_content", "new_content"],
                label={**_STR, "description": "The block to change."},
                old_content={**_STR, "description": "The exact text to replace."},
                new_content={**_STR, "description": "The text to put in its place."},
            ),
        ),
        BaseTool(
            "memory_insert",
            MEMORY,
            "Insert text into a memory block at a given line (at the end by default).",
            _params(
                ["label", "new_string"],
                label={**_STR, "description": "The block to change."},
                new_string={**_STR, "description": "The text to insert."},
                insert_line={
                    "type": "integer",
                    "description": "Insert after this line; 0 is the top, -1 the end.",
                },
            ),
        ),
        BaseTool(
            "memory_replace",
            MEMORY,
            "Replace text that appears exactly once in a memory block.",
            _params(
                ["label", "old_string", "new_string"],
                label={**_STR, "description": "The block to change."},
                old_string={**_STR, "description": "The exact text to replace; must be unique."},
                new_string={**_STR, "description": "The replacement (may be empty)."},
            ),
        ),
        BaseTool(
            "memory_rethink",
            MEMORY,
            "Rewrite a memory block completely.",
            _params(
                ["label", "new_memory"],
                label={**_STR, "description": "The block to rewrite."},
                new_memory={**_STR, "description": "The block's whole new text."},
            ),
        ),
        BaseTool(
            "memory_finish_edits",
            MEMORY,
            "Say that memory editing is done for now.",
            _params([]),
        ),
        # The file tools (engram.services.file_tools): agents get them with their first source.
        BaseTool(
            "open_files",
            CORE,
            "Open files of your data sources so that their lines stay in your system message "
            f"until closed (at most {MAX_OPEN_FILES} at once: opening more closes the ones "
            "opened longest ago). Also closes files.",
            _params(
                [],
                file_requests={
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "file_name": {
                                **_STR,
                                "description": "The file, as <source>/<file> (or just <file> "
                                "when no other attached file has that name).",
                            },
                            "offset": {
                                "type": "integer",
                                "description": "Lines to skip from the top (default 0).",
                            },
                            "length": {
                                "type": "integer",
                                "description": "Lines to show (default: as many as fit).",
                            },
                        },
                        "required": ["file_name"],
                    },
                    "description": "The files to open and which of their lines to show.",
                },
                close={
                    "type": "array",
                    "items": _STR,
                    "description": "Files to close.",
                },
                close_all_others={
                    "type": "boolean",
                    "description": "Close every file not named in file_requests (default false).",
                },
            ),
        ),
        BaseTool(
            "grep_files",
            CORE,
            "Find the lines of your data sources' files that match a regular expression, "
            f"{GREP_PAGE_SIZE} at a time, each with the lines around it.",
            _params(
                ["pattern"],
                pattern={**_STR, "description": "A regular expression (Python syntax)."},
                include={
                    **_STR,
                    "description": "Only files whose name matches this pattern, e.g. '*.md'.",
                },
                context_lines={
                    "type": "integer",
                    "description": "Lines shown before and after each match (default 1).",
                },
                offset={
                    "type": "integer",
                    "description": "Skip this many matching lines (to see the next page).",
                },
            ),
        ),
        BaseTool(
            "semantic_search_files",
            CORE,
            "Find the passages of your data sources' files closest in meaning to a query, "
            "best first, with the file and lines each comes from.",
            _params(
                ["query"],
                query={**_STR, "description": "What you are looking for, in plain words."},
                limit={
                    "type": "integer",
                    "description": "At most this many passages (default 5).",
                },
            ),
        ),
    )
}

# The tools each agent type starts with when include_base_tools is on.
DEFAULT_TOOLS_BY_AGENT_TYPE: dict[str, tuple[str, ...]] = {
    "native": (
        "conversation_search",
        "archival_memory_insert",
        "archival_memory_search",
        "memory_insert",
        "memory_replace",
    ),
    "heartbeat": (
        "send_message",
        "conversation_search",
        "archival_memory_insert",
        "archival_memory_search",
        "memory_insert",
        "memory_replace",
    ),
}


async def ensure_base_tools(session: AsyncSession, names: tuple[str, ...]) -> dict[str, str]:
    """Register the named base tools in the session's organization if missing; name -> id.

    Two first agents of an organization may register the same base tool at
    once.  Each insert runs in a savepoint, so the loser of that race keeps
    its transaction: it rolls back only the insert, then reads the winner's
    row (committed by then, since the unique index made it wait).
    """
    existing = {
        tool.name: tool.id
        for tool in (await session.scalars(select(Tool).where(Tool.name.in_(names)))).all()
    }
    for name in names:
        if name not in existing:
            existing[name] = await _register(session, BASE_TOOLS[name])
    return existing


async def _register(session: AsyncSession, base: BaseTool) -> str:
    tool = Tool(
        name=base.name,
        description=base.description,
        tool_type=base.kind,
        json_schema=base.json_schema,
    )
    try:
        async with session.begin_nested():
            session.add(tool)
            await session.flush()
        return tool.id
    except IntegrityError:
        winner = (await session.scalars(select(Tool).where(Tool.name == base.name))).first()
        if winner is None:
            raise
        return winner.id
