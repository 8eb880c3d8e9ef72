"""An agent's state as a turn starts, read in one statement.

A turn used to read its agent's last message number, whether a run was
running, its blocks, its tools, its passage count and its attached files one
query at a time: six statements, each a round trip plus SQLAlchemy's
statement handling, which dominate such small reads.  Here they are
correlated scalar subqueries of one statement, the collections folded into
JSON arrays (:mod:`engram.store.json_aggregates`), built once per dialect.

Scoping is the session's, as for any query: the statement is
:func:`~engram.store.scoping.prescoped`, so every table in every subquery
carries ``organization_id = :scope``, and it runs in a session scoped to the
agent's organization, which supplies the value.

The statement runs after the agent's row is locked, never as part of the
locking statement: on PostgreSQL a statement's snapshot is taken when it
starts, so a locking statement that waited would read what the previous
holder of the lock had not yet committed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, Select, bindparam, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from engram.store.json_aggregates import as_json, decode_list, json_list
from engram.store.models import (
    AgentBlock,
    AgentTool,
    ArchiveAgent,
    Block,
    FileView,
    Message,
    Passage,
    Run,
    Source,
    SourceAgent,
    SourceFile,
    Tool,
)
from engram.store.scoping import prescoped

RUNNING = "running"
# The most attached files the system message lists by name (one more is read,
# to tell that there are more).
MAX_LISTED_FILES = 100


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """A memory block attached to the agent (what the runtime's memory is built from)."""

    label: str
    value: str
    char_limit: int
    description: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class StoredTool:
    """A tool attached to the agent."""

    name: str
    description: str
    json_schema: dict[str, Any]
    return_char_limit: int
    default_requires_approval: bool


@dataclass(frozen=True, slots=True)
class ListedFile:
    """An attached file as the system message lists it, with its open window if any."""

    id: str
    source: str
    file_name: str
    has_text: bool
    start_line: int | None  # None: the file is not open
    line_count: int | None


@dataclass(frozen=True, slots=True)
class AgentState:
    last_sequence: int  # the agent's highest message sequence number; 0 before any
    running: bool  # whether any of its runs is running
    blocks: list[StoredBlock]
    last_memory_change: datetime | None  # the newest block's update time
    tools: list[StoredTool]  # in name order
    passages: int  # in the archives the agent can search
    files: list[ListedFile]  # open files first, then by source and name; at most 101


def files_listing(agent_id: Any) -> Select[Any]:
    """The files of the sources attached to ``agent_id``, open ones first, one past the limit.

    ``agent_id`` is a value or a bound parameter.  Columns: id, source name,
    file name, whether it has text, and the open window's start and length.
    """
    columns: list[ColumnElement[Any]] = [
        SourceFile.id.label("id"),
        Source.name.label("source"),
        SourceFile.file_name.label("file_name"),
        SourceFile.text.is_not(None).label("has_text"),
        FileView.start_line.label("start_line"),
        FileView.line_count.label("line_count"),
        FileView.file_id.is_(None).label("closed"),
    ]
    attached = (SourceAgent.source_id == Source.id) & (SourceAgent.agent_id == agent_id)
    return (
        select(*columns)
        .join(Source, Source.id == SourceFile.source_id)
        .join(SourceAgent, attached)
        .outerjoin(
            FileView,
            (FileView.file_id == SourceFile.id)
            & (FileView.agent_id == agent_id)
            & FileView.is_open.is_(True),
        )
        .order_by(FileView.file_id.is_(None), Source.name, SourceFile.file_name, SourceFile.id)
        .limit(MAX_LISTED_FILES + 1)
    )


def listed_file(row: Any) -> ListedFile:
    """A row of :func:`files_listing` (or its JSON form) as a :class:`ListedFile`."""
    file_id, source, file_name, has_text, start_line, line_count = row[:6]
    return ListedFile(file_id, source, file_name, bool(has_text), start_line, line_count)


def _array(dialect: str, *values: Any) -> Any:
    return func.json_build_array(*values) if dialect == "postgresql" else func.json_array(*values)


def _document(dialect: str, column: Any) -> Any:
    """A JSON column as a JSON value inside an array (SQLite stores JSON as text)."""
    return column if dialect == "postgresql" else func.json(column)


@functools.cache
def agent_state_statement(dialect: str) -> Select[Any]:
    """The statement behind :func:`read_agent_state`, built (and cache-keyed) once per dialect."""
    agent_id: BindParameter[str] = bindparam("agent_id")
    last = select(func.max(Message.sequence_id)).where(Message.agent_id == agent_id)
    running = exists(select(Run.id).where(Run.agent_id == agent_id, Run.status == RUNNING))
    attached_blocks = (AgentBlock.block_id == Block.id) & (AgentBlock.agent_id == agent_id)
    blocks = select(
        json_list(
            dialect,
            _array(
                dialect,
                Block.label,
                Block.value,
                Block.char_limit,
                Block.description,
                Block.read_only,
            ),
            Block.id,
        )
    ).join(AgentBlock, attached_blocks)
    changed = select(func.max(Block.updated_at)).join(AgentBlock, attached_blocks)
    tools = (
        select(
            json_list(
                dialect,
                _array(
                    dialect,
                    Tool.name,
                    Tool.description,
                    _document(dialect, Tool.json_schema),
                    Tool.return_char_limit,
                    Tool.default_requires_approval,
                ),
                Tool.name,
            )
        )
        .select_from(Tool)
        .join(AgentTool, (AgentTool.tool_id == Tool.id) & (AgentTool.agent_id == agent_id))
    )
    passages = (
        select(func.count())
        .select_from(Passage)
        .join(
            ArchiveAgent,
            (ArchiveAgent.archive_id == Passage.archive_id) & (ArchiveAgent.agent_id == agent_id),
        )
    )
    listing = files_listing(agent_id).subquery()
    files = select(
        json_list(
            dialect,
            _array(
                dialect,
                listing.c.id,
                listing.c.source,
                listing.c.file_name,
                listing.c.has_text,
                listing.c.start_line,
                listing.c.line_count,
            ),
            *_ordering(listing),
        )
    ).select_from(listing)
    columns: list[ColumnElement[Any]] = [
        last.scalar_subquery(),
        running,
        as_json(blocks.scalar_subquery()),
        changed.scalar_subquery(),
        as_json(tools.scalar_subquery()),
        passages.scalar_subquery(),
        as_json(files.scalar_subquery()),
    ]
    return prescoped(select(*columns))


def _ordering(listing: Any) -> Any:
    # The listing's own order, again inside the aggregate (a subquery's order is not kept).
    return (listing.c.closed, listing.c.source, listing.c.file_name, listing.c.id)


async def read_agent_state(session: AsyncSession, agent_id: str) -> AgentState:
    """The agent's state, in one statement (see the module's docstring)."""
    statement = agent_state_statement(session.get_bind().dialect.name)
    row = (await session.execute(statement, {"agent_id": agent_id})).one()
    last, running, blocks, changed, tools, passages, files = row
    return AgentState(
        last_sequence=int(last or 0),
        running=bool(running),
        blocks=[
            StoredBlock(label, value, char_limit, description, bool(read_only))
            for label, value, char_limit, description, read_only in decode_list(blocks)
        ],
        last_memory_change=changed,
        tools=[
            StoredTool(name, description, schema or {}, limit, bool(approval))
            for name, description, schema, limit, approval in decode_list(tools)
        ],
        passages=int(passages or 0),
        files=[listed_file(entry) for entry in decode_list(files)],
    )
