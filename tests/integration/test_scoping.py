"""Organization scoping is applied to every ORM query and every written row."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import aliased

from engram.services.admin import DEFAULT_ORGANIZATION_ID, ensure_default_identity
from engram.store.database import Database
from engram.store.errors import OrganizationScopeError
from engram.store.models import Agent, AgentTag, Block, Organization
from engram.store.scoping import scoped_update


async def two_organizations(database: Database) -> tuple[str, str]:
    async with database.transaction(None, all_organizations=True) as session:
        first, second = Organization(name="first"), Organization(name="second")
        session.add_all([first, second])
    for org, label in ((first.id, "mine"), (second.id, "theirs")):
        async with database.transaction(org) as session:
            agent = Agent(name=label, agent_type="native")
            session.add(agent)
            await session.flush()
            session.add(AgentTag(agent_id=agent.id, tag=label))
            session.add(Block(label=label, value=label))
    return first.id, second.id


async def test_selects_see_only_their_organization(database: Database) -> None:
    first, _ = await two_organizations(database)
    async with database.read(first) as session:
        assert [a.name for a in (await session.scalars(select(Agent))).all()] == ["mine"]
        assert await session.scalar(select(func.count()).select_from(Block)) == 1
        # Joins and aliases are filtered too.
        tag = aliased(AgentTag)
        joined = await session.execute(
            select(Agent.name, tag.tag).join(tag, tag.agent_id == Agent.id)
        )
        assert joined.all() == [("mine", "mine")]


async def test_a_foreign_id_reads_as_missing(database: Database) -> None:
    first, second = await two_organizations(database)
    async with database.read(second) as session:
        theirs = (await session.scalars(select(Agent))).one()
    async with database.read(first) as session:
        assert (await session.scalars(select(Agent).where(Agent.id == theirs.id))).first() is None


async def test_bulk_update_and_delete_stay_in_scope(database: Database) -> None:
    first, second = await two_organizations(database)
    async with database.transaction(first) as session:
        await session.execute(update(Block).values(value="changed"))
        await session.execute(delete(AgentTag))
    async with database.read(second) as session:
        assert (await session.scalars(select(Block.value))).all() == ["theirs"]
        assert (await session.scalars(select(AgentTag.tag))).all() == ["theirs"]


async def test_rows_are_stamped_with_the_scope(database: Database) -> None:
    first, _ = await two_organizations(database)
    async with database.transaction(first) as session:
        block = Block(label="new")
        session.add(block)
    assert block.organization_id == first


async def test_writing_into_another_organization_is_refused(database: Database) -> None:
    first, second = await two_organizations(database)
    with pytest.raises(OrganizationScopeError):
        async with database.transaction(first) as session:
            session.add(Block(label="sneaky", organization_id=second))


async def test_a_query_without_scope_is_refused(database: Database) -> None:
    await two_organizations(database)
    with pytest.raises(OrganizationScopeError):
        async with database.read(None) as session:
            await session.scalars(select(Agent))
    # Unscoped models (the organizations themselves) are fine.
    async with database.read(None) as session:
        assert len((await session.scalars(select(Organization))).all()) == 2
    # System work opts in to every organization explicitly.
    async with database.read(None, all_organizations=True) as session:
        assert len((await session.scalars(select(Agent))).all()) == 2


async def test_read_sessions_cannot_write(database: Database) -> None:
    first, _ = await two_organizations(database)
    with pytest.raises(OrganizationScopeError):
        async with database.read(first) as session:
            session.add(Block(label="x"))
            await session.flush()


async def test_servers_creating_the_default_identity_at_once_all_get_it(
    database: Database,
) -> None:
    """Replicas starting together on a fresh database race to create it; none may fail."""
    callers = await asyncio.gather(*(ensure_default_identity(database) for _ in range(4)))

    assert {caller.organization_id for caller in callers} == {DEFAULT_ORGANIZATION_ID}
    async with database.read(None, all_organizations=True) as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Organization)
            .where(Organization.id == DEFAULT_ORGANIZATION_ID)
        )
    assert count == 1


async def test_a_scoped_update_changes_only_its_organization(database: Database) -> None:
    first, second = await two_organizations(database)
    blocks = Block.__table__
    statement = scoped_update(blocks).values(value="changed")  # type: ignore[arg-type]
    async with database.transaction(first) as session:
        await session.execute(statement)
    async with database.read(second) as session:
        assert (await session.scalars(select(Block.value))).all() == ["theirs"]
    async with database.read(first) as session:
        assert (await session.scalars(select(Block.value))).all() == ["changed"]
    with pytest.raises(OrganizationScopeError):
        async with database.transaction(None) as session:
            await session.execute(statement)
