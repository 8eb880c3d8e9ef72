"""Agents: their settings, tags, memory blocks and tools.

Every change is one transaction: an agent is created together with its
inline blocks and links, or not at all.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from engram.services.base_tools import (
    BASE_TOOLS,
    DEFAULT_TOOLS_BY_AGENT_TYPE,
    ensure_base_tools,
)
from engram.services.blocks import (
    BlockView,
    block_views,
    label_in_use,
    new_block,
    update_block_row,
    validate_block_fields,
)
from engram.services.caller import Caller
from engram.services.common import check_etag, load
from engram.services.errors import FieldViolation, InvalidArgumentError
from engram.services.idempotency import create_once
from engram.services.pagination import by_key, created_key, cut_page, oldest_first, page_request
from engram.services.tool_rules import validate_tool_rules
from engram.store.agent_reads import (
    AgentReader,
    AgentRecord,
    agent_by_id,
    agent_columns,
    record_of,
)
from engram.store.errors import NotFoundError
from engram.store.json_aggregates import as_string_list, decode_list, string_list
from engram.store.models import Agent, AgentBlock, AgentTag, AgentTool, Block, Tool
from engram.store.renderings import LastRenderings
from engram.store.types import utc_now

AGENT_TYPES = ("native", "heartbeat")
DEFAULT_AGENT_TYPE = "native"
DISPLAY_NAME = re.compile(r"^[\w '\-]{1,200}$")
MODEL_HANDLE = re.compile(r"^[^/\s]+/\S+$")
MAX_TAG_LENGTH = 200
UPDATABLE_FIELDS = frozenset(
    {
        "display_name",
        "description",
        "system",
        "model",
        "model_settings",
        "embedding",
        "context_window_limit",
        "tags",
        "metadata",
        "tool_rules",
        "message_buffer_autoclear",
    }
)

DEFAULT_SYSTEM_PROMPTS = {
    "native": (
        "You are a helpful assistant with a long-term memory. Your core memory blocks are "
        "shown below and stay in view; keep them current with your memory tools as you learn "
        "about the user and yourself. Search the past conversation when the user refers to "
        "something no longer in view. Answer the user directly in plain text."
    ),
    "heartbeat": (
        "You are a helpful assistant with a long-term memory. Your core memory blocks are "
        "shown below and stay in view; keep them current with your memory tools. The user only "
        "sees what you send with send_message. After a tool call you get another step only if "
        "you ask for one with request_heartbeat."
    ),
}


@dataclass(frozen=True)
class AgentView:
    """An agent with its tags and the ids of its blocks and tools.

    Views are shared between calls (:meth:`AgentService.get` reuses the view
    of an unchanged row), so nobody changes one.
    """

    agent: AgentRecord
    tags: list[str] = field(default_factory=list)
    block_ids: list[str] = field(default_factory=list)
    tool_ids: list[str] = field(default_factory=list)


@dataclass
class NewAgent:
    """Everything CreateAgent asks for, already translated from the request."""

    values: dict[str, Any]
    memory_blocks: list[dict[str, Any]] = field(default_factory=list)
    block_ids: list[str] = field(default_factory=list)
    tool_ids: list[str] = field(default_factory=list)
    tool_names: list[str] = field(default_factory=list)
    include_base_tools: bool = True


@dataclass(frozen=True)
class AgentFilters:
    display_name: str = ""
    tags: tuple[str, ...] = ()
    match_all_tags: bool = False


def validate_agent_fields(values: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """Check the agent fields present in ``values``; returns them cleaned."""
    violations: list[FieldViolation] = []
    clean = dict(values)

    def bad(name: str, why: str) -> None:
        violations.append(FieldViolation(f"agent.{name}", why))

    if creating and not clean.get("display_name"):
        clean["display_name"] = f"agent-{secrets.token_hex(3)}"
    if "display_name" in clean and not DISPLAY_NAME.fullmatch(str(clean["display_name"])):
        bad("display_name", "use 1 to 200 letters, digits, spaces, '_', \"'\" or '-'")
    if creating:
        clean["agent_type"] = clean.get("agent_type") or DEFAULT_AGENT_TYPE
        if clean["agent_type"] not in AGENT_TYPES:
            bad("agent_type", f"must be one of {', '.join(AGENT_TYPES)}")
        elif not clean.get("system"):
            clean["system"] = DEFAULT_SYSTEM_PROMPTS[clean["agent_type"]]
    for handle in ("model", "embedding"):
        if clean.get(handle) and not MODEL_HANDLE.fullmatch(str(clean[handle])):
            bad(handle, "must be a handle of the form provider/model")
    if "context_window_limit" in clean and int(clean["context_window_limit"] or 0) < 0:
        bad("context_window_limit", "must not be negative")
    if "tags" in clean:
        tags = list(dict.fromkeys(str(tag) for tag in clean["tags"]))
        for tag in tags:
            if not tag or len(tag) > MAX_TAG_LENGTH:
                bad("tags", f"each tag must be 1 to {MAX_TAG_LENGTH} characters")
                break
        clean["tags"] = tags
    settings = clean.get("model_settings") or {}
    temperature = settings.get("temperature")
    if temperature is not None and not 0 <= float(temperature) <= 2:
        bad("model_settings.temperature", "must be between 0 and 2")
    max_tokens = settings.get("max_output_tokens")
    if max_tokens is not None and int(max_tokens) <= 0:
        bad("model_settings.max_output_tokens", "must be positive")
    effort = settings.get("reasoning_effort")
    if effort and effort not in ("low", "medium", "high"):
        bad("model_settings.reasoning_effort", "must be low, medium or high")
    if "tool_rules" in clean:
        violations.extend(validate_tool_rules(clean["tool_rules"], "agent.tool_rules"))
    if violations:
        raise InvalidArgumentError(violations)
    return clean


def _apply(agent: Agent, values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        if name == "tags":
            continue
        if name == "display_name":
            agent.name = value
        elif name == "metadata":
            agent.metadata_ = dict(value or {})
        elif name == "context_window_limit":
            agent.context_window_limit = int(value) or None
        else:
            setattr(agent, name, value)


@functools.cache
def _link_columns(dialect: str) -> tuple[ColumnElement[Any], ...]:
    """Each agent's tag values, block ids (by label) and tool ids (by tool name), as lists.

    Correlated subqueries, so that an agent or a whole page of agents is read
    with everything attached to it in a single statement.
    """
    tags = (
        select(string_list(dialect, AgentTag.tag, AgentTag.tag))
        .where(AgentTag.agent_id == Agent.id)
        .scalar_subquery()
    )
    blocks = (
        select(string_list(dialect, AgentBlock.block_id, AgentBlock.block_label))
        .where(AgentBlock.agent_id == Agent.id)
        .scalar_subquery()
    )
    tools = (
        select(string_list(dialect, AgentTool.tool_id, Tool.name))
        .select_from(AgentTool)
        .join(Tool, Tool.id == AgentTool.tool_id)
        .where(AgentTool.agent_id == Agent.id)
        .scalar_subquery()
    )
    return tuple(as_string_list(dialect, column) for column in (tags, blocks, tools))


def with_links(query: Select[Any], dialect: str) -> Select[Any]:
    """``query`` on agents, with the columns :func:`view_of` reads."""
    return query.add_columns(*_link_columns(dialect))


@functools.cache
def _agent_by_id(dialect: str) -> Select[Any]:
    # Built once per dialect: GetAgent is the hottest read.
    return agent_by_id(_link_columns(dialect))


def _row_created_key(row: Sequence[Any]) -> tuple[str, str]:
    return created_key(record_of(row))


def view_of(row: Sequence[Any]) -> AgentView:
    """The view of one row of a :func:`with_links` query on :func:`agent_columns`."""
    tags, block_ids, tool_ids = row[-3:]
    return AgentView(
        record_of(row),
        tags=decode_list(tags),
        block_ids=decode_list(block_ids),
        tool_ids=decode_list(tool_ids),
    )


def _filtered(query: Select[Any], filters: AgentFilters) -> Select[Any]:
    if filters.display_name:
        query = query.where(Agent.name == filters.display_name)
    if filters.tags:
        tagged = select(AgentTag.agent_id).where(AgentTag.tag.in_(filters.tags))
        if filters.match_all_tags:
            tagged = tagged.group_by(AgentTag.agent_id).having(
                func.count(func.distinct(AgentTag.tag)) == len(set(filters.tags))
            )
        query = query.where(Agent.id.in_(tagged))
    return query


def _touch(agent: Agent) -> None:
    """Record a change to what is attached to ``agent``.

    Its blocks and tools are part of the Agent resource, so attaching or
    detaching one moves ``update_time`` and, through the version, the etag.
    """
    agent.updated_at = utc_now()


class AgentService:
    """Agents and what is attached to them."""

    def __init__(self, database: Any) -> None:
        self.database = database
        self._agent_reader: AgentReader | None = None
        # The view of each agent's last row, reused while the reader returns that row.
        self._views: LastRenderings[str, Sequence[Any], AgentView] = LastRenderings(view_of)

    # --- agents ---------------------------------------------------------------

    async def create(self, caller: Caller, spec: NewAgent, request_id: str) -> AgentView:
        values = validate_agent_fields(spec.values, creating=True)
        blocks = [
            validate_block_fields(block, f"memory_blocks[{index}]")
            for index, block in enumerate(spec.memory_blocks)
        ]

        async def create(session: AsyncSession) -> str:
            agent = Agent(model_settings={}, tool_rules=[], metadata_={})
            _apply(agent, values)
            session.add(agent)
            await session.flush()
            self._set_tags(session, agent.id, values.get("tags", []))
            labels: dict[str, str] = {}
            for index, block_values in enumerate(blocks):
                block = new_block(block_values)
                session.add(block)
                await session.flush()
                self._link_block(session, agent.id, block, labels, f"memory_blocks[{index}].label")
            for index, block_id in enumerate(spec.block_ids):
                block = await load(session, Block, block_id, "block")
                self._link_block(session, agent.id, block, labels, f"block_names[{index}]")
            tool_ids = list(spec.tool_ids)
            for tool_name in spec.tool_names:
                tool_id = await session.scalar(select(Tool.id).where(Tool.name == tool_name))
                if tool_id is None and tool_name in BASE_TOOLS:
                    # Every organization has the base tools; they are registered on first use.
                    tool_id = (await ensure_base_tools(session, (tool_name,)))[tool_name]
                if tool_id is None:
                    raise NotFoundError("tool", tool_name)
                tool_ids.append(tool_id)
            if spec.include_base_tools:
                defaults = DEFAULT_TOOLS_BY_AGENT_TYPE[values["agent_type"]]
                tool_ids.extend((await ensure_base_tools(session, defaults)).values())
            for tool_id in dict.fromkeys(tool_ids):
                await load(session, Tool, tool_id, "tool")
                session.add(AgentTool(agent_id=agent.id, tool_id=tool_id))
            return agent.id

        agent_id = await create_once(
            self.database, caller.organization_id, "CreateAgent", request_id, create
        )
        return await self.get(caller, agent_id)

    async def get(self, caller: Caller, agent_id: str) -> AgentView:
        row: Sequence[Any] | None
        try:
            row = await self._reader().fetch(caller.organization_id, agent_id)
        except Exception:
            # A failure below the ORM (a connection lost since its last use,
            # say) is retried once through a session, which reconnects and
            # owns the translation of database errors into store errors.
            row = await self._get_in_session(caller, agent_id)
        if row is None:
            raise NotFoundError("agent", agent_id)
        return self._views.get(agent_id, row)

    def _reader(self) -> AgentReader:
        if self._agent_reader is None:
            pinned = self.database.pinned
            self._agent_reader = AgentReader(_link_columns(pinned.dialect.name), pinned)
        return self._agent_reader

    async def _get_in_session(self, caller: Caller, agent_id: str) -> Sequence[Any] | None:
        statement = _agent_by_id(self.database.engine.dialect.name)
        async with self.database.read(caller.organization_id) as session:
            row = (await session.execute(statement, {"agent_id": agent_id})).first()
        return None if row is None else tuple(row)

    async def list_page(
        self, caller: Caller, filters: AgentFilters, *, page_size: int, page_token: str
    ) -> tuple[list[AgentView], str]:
        page = page_request(
            page_size,
            page_token,
            {
                "name": filters.display_name,
                "tags": sorted(filters.tags),
                "all": filters.match_all_tags,
            },
        )
        query = oldest_first(
            with_links(
                _filtered(select(*agent_columns()), filters), self.database.engine.dialect.name
            ),
            Agent,
            page,
        )
        async with self.database.read(caller.organization_id) as session:
            rows, token = cut_page((await session.execute(query)).all(), page, _row_created_key)
        return [view_of(row) for row in rows], token

    async def count(self, caller: Caller, filters: AgentFilters) -> int:
        query = _filtered(select(func.count()).select_from(Agent), filters)
        async with self.database.read(caller.organization_id) as session:
            return int(await session.scalar(query) or 0)

    async def update(
        self, caller: Caller, agent_id: str, changes: Mapping[str, Any], etag: str
    ) -> AgentView:
        clean = validate_agent_fields(changes, creating=False)

        async def work(session: AsyncSession) -> None:
            agent = await load(session, Agent, agent_id, "agent", lock=True)
            check_etag(etag, agent.version, f"agents/{agent_id}")
            _apply(agent, clean)
            if "tags" in clean:
                await session.execute(delete(AgentTag).where(AgentTag.agent_id == agent_id))
                self._set_tags(session, agent_id, clean["tags"])
            agent.updated_at = utc_now()

        await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, agent_id)

    async def delete(self, caller: Caller, agent_id: str, etag: str) -> None:
        async def work(session: AsyncSession) -> None:
            agent = await load(session, Agent, agent_id, "agent", lock=True)
            check_etag(etag, agent.version, f"agents/{agent_id}")
            # Blocks only this agent uses go with it; shared blocks stay.
            mine = select(AgentBlock.block_id).where(AgentBlock.agent_id == agent_id)
            shared = select(AgentBlock.block_id).where(
                AgentBlock.block_id.in_(mine), AgentBlock.agent_id != agent_id
            )
            private = (
                await session.scalars(
                    select(Block).where(Block.id.in_(mine), Block.id.not_in(shared))
                )
            ).all()
            for block in private:
                await session.delete(block)
            await session.delete(agent)

        await self.database.run_transaction(work, caller.organization_id)

    # --- blocks of an agent ----------------------------------------------------

    async def list_blocks(
        self, caller: Caller, agent_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[BlockView], str]:
        page = page_request(page_size, page_token, {"agent": agent_id})
        query = by_key(
            select(Block)
            .join(AgentBlock, AgentBlock.block_id == Block.id)
            .where(AgentBlock.agent_id == agent_id),
            AgentBlock.block_label,
            Block,
            page,
        )
        async with self.database.read(caller.organization_id) as session:
            await load(session, Agent, agent_id, "agent")
            blocks, token = cut_page(
                (await session.scalars(query)).all(), page, lambda b: (b.label, b.id)
            )
            return await block_views(session, blocks), token

    async def get_block(self, caller: Caller, agent_id: str, label: str) -> BlockView:
        async with self.database.read(caller.organization_id) as session:
            block = await self._block_by_label(session, agent_id, label)
            return (await block_views(session, [block]))[0]

    async def update_block(
        self, caller: Caller, agent_id: str, label: str, changes: Mapping[str, Any], etag: str
    ) -> BlockView:
        async def work(session: AsyncSession) -> str:
            block = await self._block_by_label(session, agent_id, label, lock=True)
            await update_block_row(session, block, changes, etag, "block")
            return block.id

        block_id = await self.database.run_transaction(work, caller.organization_id)
        async with self.database.read(caller.organization_id) as session:
            block = await load(session, Block, block_id, "block")
            return (await block_views(session, [block]))[0]

    async def attach_block(self, caller: Caller, agent_id: str, block_id: str) -> AgentView:
        async def work(session: AsyncSession) -> None:
            agent = await load(session, Agent, agent_id, "agent", lock=True)
            block = await load(session, Block, block_id, "block")
            links = (
                await session.scalars(select(AgentBlock).where(AgentBlock.agent_id == agent_id))
            ).all()
            if any(link.block_id == block_id for link in links):
                return
            if any(link.block_label == block.label for link in links):
                raise label_in_use(agent_id, block.label)
            session.add(AgentBlock(agent_id=agent_id, block_id=block_id, block_label=block.label))
            _touch(agent)

        await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, agent_id)

    async def detach_block(self, caller: Caller, agent_id: str, block_id: str) -> AgentView:
        async def work(session: AsyncSession) -> None:
            agent = await load(session, Agent, agent_id, "agent", lock=True)
            await load(session, Block, block_id, "block")
            link = await session.get(AgentBlock, (agent_id, block_id))
            if link is not None:
                await session.delete(link)
                _touch(agent)

        await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, agent_id)

    # --- tools of an agent -------------------------------------------------------

    async def list_tools(
        self, caller: Caller, agent_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[Tool], str]:
        page = page_request(page_size, page_token, {"agent": agent_id})
        query = by_key(
            select(Tool)
            .join(AgentTool, AgentTool.tool_id == Tool.id)
            .where(AgentTool.agent_id == agent_id),
            Tool.name,
            Tool,
            page,
        )
        async with self.database.read(caller.organization_id) as session:
            await load(session, Agent, agent_id, "agent")
            return cut_page((await session.scalars(query)).all(), page, lambda t: (t.name, t.id))

    async def attach_tool(self, caller: Caller, agent_id: str, tool_id: str) -> AgentView:
        async def work(session: AsyncSession) -> None:
            agent = await load(session, Agent, agent_id, "agent", lock=True)
            await load(session, Tool, tool_id, "tool")
            attached = await session.get(AgentTool, (agent_id, tool_id))
            if attached is None:
                session.add(AgentTool(agent_id=agent_id, tool_id=tool_id))
                _touch(agent)

        await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, agent_id)

    async def detach_tool(self, caller: Caller, agent_id: str, tool_id: str) -> AgentView:
        async def work(session: AsyncSession) -> None:
            agent = await load(session, Agent, agent_id, "agent", lock=True)
            await load(session, Tool, tool_id, "tool")
            link = await session.get(AgentTool, (agent_id, tool_id))
            if link is not None:
                await session.delete(link)
                _touch(agent)

        await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, agent_id)

    # --- helpers -------------------------------------------------------------------

    @staticmethod
    def _set_tags(session: AsyncSession, agent_id: str, tags: Sequence[str]) -> None:
        for tag in tags:
            session.add(AgentTag(agent_id=agent_id, tag=tag))

    @staticmethod
    def _link_block(
        session: AsyncSession, agent_id: str, block: Block, labels: dict[str, str], field: str
    ) -> None:
        if block.label in labels:
            raise InvalidArgumentError.field(
                field, f"the label {block.label!r} is used by another block of this agent"
            )
        labels[block.label] = block.id
        session.add(AgentBlock(agent_id=agent_id, block_id=block.id, block_label=block.label))

    @staticmethod
    async def _block_by_label(
        session: AsyncSession, agent_id: str, label: str, *, lock: bool = False
    ) -> Block:
        await load(session, Agent, agent_id, "agent")
        query = (
            select(Block)
            .join(AgentBlock, AgentBlock.block_id == Block.id)
            .where(AgentBlock.agent_id == agent_id, AgentBlock.block_label == label)
        )
        if lock:
            query = query.with_for_update(of=Block)
        block = (await session.scalars(query)).first()
        if block is None:
            raise NotFoundError("block", f"agents/{agent_id}/blocks/{label}")
        return block
