"""Core memory blocks: create, read, update and delete, shared between agents.

Limits are enforced: a value longer than the block's limit is refused with
the field named, never truncated or stored (the reference made limits
advisory; users rely on them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from engram.services.caller import Caller
from engram.services.common import check_etag, load
from engram.services.errors import FailedPreconditionError, FieldViolation, InvalidArgumentError
from engram.services.idempotency import create_once
from engram.services.pagination import created_key, cut_page, oldest_first, page_request
from engram.store.database import Database
from engram.store.models import AgentBlock, Block
from engram.store.models.blocks import DEFAULT_BLOCK_CHAR_LIMIT
from engram.store.types import utc_now

MAX_LABEL_LENGTH = 200
MAX_BLOCK_LIMIT = 10_000_000
UPDATABLE_FIELDS = frozenset({"label", "value", "limit", "description", "read_only", "metadata"})


@dataclass
class BlockView:
    """A block and the agents it is attached to."""

    block: Block
    agent_ids: list[str]


def validate_block_fields(
    values: Mapping[str, Any], prefix: str, *, current: Block | None = None
) -> dict[str, Any]:
    """Check block fields (all of them on create, the changed ones on update).

    Returns the values to store, with defaults applied and null bytes removed
    from the text (they break PostgreSQL text columns and prompts alike).
    """
    violations: list[FieldViolation] = []
    clean = dict(values)
    if "label" in clean or current is None:
        label = str(clean.get("label", "")).strip()
        if not label:
            violations.append(FieldViolation(f"{prefix}.label", "is required"))
        elif len(label) > MAX_LABEL_LENGTH:
            violations.append(
                FieldViolation(f"{prefix}.label", f"must be at most {MAX_LABEL_LENGTH} characters")
            )
        clean["label"] = label
    if "limit" in clean or current is None:
        limit = int(clean.get("limit") or 0) or DEFAULT_BLOCK_CHAR_LIMIT
        if limit < 0 or limit > MAX_BLOCK_LIMIT:
            violations.append(
                FieldViolation(f"{prefix}.limit", f"must be between 1 and {MAX_BLOCK_LIMIT}")
            )
        clean["limit"] = limit
    if "value" in clean:
        clean["value"] = str(clean["value"]).replace("\x00", "")
    value = clean.get("value", current.value if current is not None else "")
    limit = clean.get(
        "limit", current.char_limit if current is not None else DEFAULT_BLOCK_CHAR_LIMIT
    )
    # An out-of-range limit is already reported; comparing the value with it adds noise.
    if 0 < limit <= MAX_BLOCK_LIMIT and len(value) > limit:
        field = "value" if "value" in clean else "limit"
        violations.append(
            FieldViolation(
                f"{prefix}.{field}",
                f"the value is {len(value)} characters, over the block's limit of {limit}",
            )
        )
    if violations:
        raise InvalidArgumentError(violations)
    return clean


def apply_block_fields(block: Block, values: Mapping[str, Any]) -> None:
    for field, value in values.items():
        if field == "limit":
            block.char_limit = value
        elif field == "metadata":
            block.metadata_ = dict(value or {})
        else:
            setattr(block, field, value)


def new_block(values: Mapping[str, Any]) -> Block:
    block = Block(value="", description="", read_only=False, metadata_={})
    apply_block_fields(block, values)
    return block


async def block_views(session: AsyncSession, blocks: Sequence[Block]) -> list[BlockView]:
    """Blocks with their agent ids, in one query for the whole page."""
    ids = [block.id for block in blocks]
    links: dict[str, list[str]] = {block_id: [] for block_id in ids}
    if ids:
        rows = await session.execute(
            select(AgentBlock.block_id, AgentBlock.agent_id)
            .where(AgentBlock.block_id.in_(ids))
            .order_by(AgentBlock.agent_id)
        )
        for block_id, agent_id in rows:
            links[block_id].append(agent_id)
    return [BlockView(block, links[block.id]) for block in blocks]


def label_in_use(agent_id: str, label: str) -> FailedPreconditionError:
    """The refusal when ``agent_id`` already has another block labelled ``label``."""
    return FailedPreconditionError(
        f"agents/{agent_id} already has a block labelled {label!r}; detach or relabel it first",
        subject=f"agents/{agent_id}",
        violation_type="LABEL_IN_USE",
    )


async def update_block_row(
    session: AsyncSession, block: Block, changes: Mapping[str, Any], etag: str, prefix: str
) -> None:
    """Validate and apply ``changes`` to a loaded block, checking the caller's etag."""
    check_etag(etag, block.version, f"blocks/{block.id}")
    clean = validate_block_fields(changes, prefix, current=block)
    if "label" in clean and clean["label"] != block.label:
        # Keep each agent's label index in step; the unique (agent, label) rule applies.
        links = (
            await session.scalars(select(AgentBlock).where(AgentBlock.block_id == block.id))
        ).all()
        clash = await session.scalar(
            select(AgentBlock.agent_id).where(
                AgentBlock.agent_id.in_([link.agent_id for link in links]),
                AgentBlock.block_label == clean["label"],
            )
        )
        if clash is not None:
            raise label_in_use(clash, clean["label"])
        for link in links:
            link.block_label = clean["label"]
    apply_block_fields(block, clean)
    block.updated_at = utc_now()


class BlockService:
    """Standalone memory blocks."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(self, caller: Caller, values: Mapping[str, Any], request_id: str) -> BlockView:
        clean = validate_block_fields(values, "block")

        async def create(session: AsyncSession) -> str:
            block = new_block(clean)
            session.add(block)
            await session.flush()
            return block.id

        block_id = await create_once(
            self.database, caller.organization_id, "CreateBlock", request_id, create
        )
        return await self.get(caller, block_id)

    async def get(self, caller: Caller, block_id: str) -> BlockView:
        async with self.database.read(caller.organization_id) as session:
            block = await load(session, Block, block_id, "block")
            return (await block_views(session, [block]))[0]

    async def list_page(
        self, caller: Caller, *, label: str, page_size: int, page_token: str
    ) -> tuple[list[BlockView], str]:
        page = page_request(page_size, page_token, {"label": label})
        query = select(Block)
        if label:
            query = query.where(Block.label == label)
        async with self.database.read(caller.organization_id) as session:
            rows = (await session.scalars(oldest_first(query, Block, page))).all()
            blocks, token = cut_page(rows, page, created_key)
            return await block_views(session, blocks), token

    async def update(
        self, caller: Caller, block_id: str, changes: Mapping[str, Any], etag: str
    ) -> BlockView:
        async def work(session: AsyncSession) -> None:
            block = await load(session, Block, block_id, "block", lock=True)
            await update_block_row(session, block, changes, etag, "block")

        await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, block_id)

    async def delete(self, caller: Caller, block_id: str, etag: str, force: bool) -> None:
        async def work(session: AsyncSession) -> None:
            block = await load(session, Block, block_id, "block", lock=True)
            check_etag(etag, block.version, f"blocks/{block_id}")
            attached = await session.scalar(
                select(func.count()).select_from(AgentBlock).where(AgentBlock.block_id == block_id)
            )
            if attached and not force:
                raise FailedPreconditionError(
                    f"blocks/{block_id} is attached to {attached} agent(s); detach it first or "
                    "delete with force",
                    subject=f"blocks/{block_id}",
                    violation_type="BLOCK_IN_USE",
                )
            await session.delete(block)

        await self.database.run_transaction(work, caller.organization_id)
