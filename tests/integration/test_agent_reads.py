"""GetAgent's read below the ORM: same rows, same scoping, and recovery from a dead connection."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import update

from engram.services.admin import AdminService, ensure_default_identity
from engram.services.agents import AgentService, NewAgent, _link_columns
from engram.services.caller import Caller
from engram.store import pool
from engram.store.agent_reads import AgentReader
from engram.store.database import Database
from engram.store.errors import NotFoundError
from engram.store.models import Agent


@pytest.fixture
async def agents(database: Database) -> tuple[AgentService, Caller, Caller]:
    ours = await ensure_default_identity(database)
    other_org = await AdminService(database).create_organization(ours, "other", "")
    theirs = Caller(other_org.id, "user-unused")
    return AgentService(database), ours, theirs


async def _new_agent(service: AgentService, caller: Caller) -> str:
    view = await service.create(
        caller,
        NewAgent(
            values={"display_name": "reader", "model": "openai/gpt-4o-mini", "tags": ["b", "a"]},
            memory_blocks=[{"label": "persona", "value": "p"}, {"label": "human", "value": "h"}],
        ),
        "",
    )
    return view.agent.id


async def test_the_driver_read_equals_the_session_read(
    agents: tuple[AgentService, Caller, Caller],
) -> None:
    service, ours, _ = agents
    agent_id = await _new_agent(service, ours)
    through_driver = await service._reader().fetch(ours.organization_id, agent_id)
    through_session = await service._get_in_session(ours, agent_id)
    assert through_driver is not None
    assert through_driver == through_session
    view = await service.get(ours, agent_id)
    assert view.tags == ["a", "b"]
    assert len(view.block_ids) == 2
    assert view.agent.created_at.tzinfo is not None


async def test_another_organization_reads_nothing(
    agents: tuple[AgentService, Caller, Caller],
) -> None:
    service, ours, theirs = agents
    agent_id = await _new_agent(service, ours)
    assert await service._reader().fetch(theirs.organization_id, agent_id) is None
    with pytest.raises(NotFoundError):
        await service.get(theirs, agent_id)


async def test_concurrent_reads_share_batches_and_each_gets_its_own_row(
    agents: tuple[AgentService, Caller, Caller], database: Database
) -> None:
    service, ours, theirs = agents
    our_ids = [await _new_agent(service, ours) for _ in range(4)]
    their_id = await _new_agent(service, theirs)
    reader = AgentReader(_link_columns(database.pinned.dialect.name), database.pinned)
    batches: list[tuple[str, list[str]]] = []
    read = reader._read

    async def counted(organization_id: str, agent_ids: Any) -> Any:
        batches.append((organization_id, list(agent_ids)))
        return await read(organization_id, agent_ids)

    reader._read = counted  # type: ignore[method-assign]
    asked = [
        *((ours.organization_id, agent_id) for agent_id in our_ids * 3),
        (theirs.organization_id, their_id),
        (theirs.organization_id, our_ids[0]),  # another organization's agent
        (ours.organization_id, their_id),
        (ours.organization_id, "agent-missing"),
    ]

    rows = await asyncio.gather(*(reader.fetch(*key) for key in asked))

    # Fewer trips than reads, yet every read answered as if it ran alone;
    # each trip reads for one organization.
    assert len(batches) < len(asked)
    assert max(len(agent_ids) for _, agent_ids in batches) > 1
    assert {organization_id for organization_id, _ in batches} == {
        ours.organization_id,
        theirs.organization_id,
    }
    assert reader._batchers == {}  # idle batchers are dropped
    for (organization_id, agent_id), row in zip(asked, rows, strict=True):
        alone = await service._get_in_session(Caller(organization_id, "u"), agent_id)
        assert row == alone, (organization_id, agent_id)
    assert sum(row is None for row in rows) == 3
    assert {row[0] for row in rows if row is not None} == {*our_ids, their_id}


async def test_a_read_asked_after_a_write_sees_it_under_load(
    agents: tuple[AgentService, Caller, Caller],
) -> None:
    """Each GetAgent that starts after an update returns the update, batched or not."""
    service, ours, _ = agents
    agent_id = await _new_agent(service, ours)
    other_ids = [await _new_agent(service, ours) for _ in range(3)]

    async def keep_reading(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.gather(*(service.get(ours, other) for other in other_ids))

    stop = asyncio.Event()
    background = asyncio.create_task(keep_reading(stop))
    try:
        for index in range(10):
            description = f"version {index}"
            await service.update(ours, agent_id, {"description": description}, "")
            seen = await asyncio.gather(*(service.get(ours, agent_id) for _ in range(5)))
            assert {view.agent.description for view in seen} == {description}
    finally:
        stop.set()
        await background


async def test_a_read_on_a_dead_connection_recovers(
    agents: tuple[AgentService, Caller, Caller], database: Database
) -> None:
    """A connection that died while pooled (and skipped its pre-ping) costs no failed call."""
    if not database.choice.is_postgresql:
        pytest.skip("PostgreSQL backends can be terminated from outside")
    service, ours, _ = agents
    agent_id = await _new_agent(service, ours)
    await service.get(ours, agent_id)  # leaves a recently used connection in the pool
    async with database.engine.connect() as killer:
        await killer.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    view = await service.get(ours, agent_id)
    assert view.agent.id == agent_id


class _Record:
    """Just what the ping decision reads of a pool entry."""

    def __init__(self, info: dict[str, Any], closed: bool) -> None:
        self.info = info
        self.fresh = False
        self.driver_connection = self
        self._closed = closed

    def is_closed(self) -> bool:
        return self._closed


@pytest.mark.parametrize(
    ("age", "closed", "skips_ping"),
    [(0.1, False, True), (30.0, False, False), (0.1, True, False), (None, False, False)],
)
def test_only_recently_used_open_connections_skip_the_pre_ping(
    age: float | None, closed: bool, skips_ping: bool
) -> None:
    info = {} if age is None else {pool._RETURNED_AT: time.monotonic() - age}
    record = _Record(info, closed)
    pool._skip_ping_if_recent(record)  # type: ignore[arg-type]
    assert record.fresh is skips_ping


async def test_an_unchanged_agent_comes_back_as_the_same_row_and_view(
    agents: tuple[AgentService, Caller, Caller],
) -> None:
    service, ours, _ = agents
    agent_id = await _new_agent(service, ours)
    first_row = await service._reader().fetch(ours.organization_id, agent_id)
    assert await service._reader().fetch(ours.organization_id, agent_id) is first_row
    first_view = await service.get(ours, agent_id)
    assert await service.get(ours, agent_id) is first_view

    await service.update(ours, agent_id, {"description": "changed"}, "")
    changed = await service.get(ours, agent_id)
    assert changed is not first_view
    assert changed.agent.description == "changed"
    assert changed.agent.version == first_view.agent.version + 1
    assert await service.get(ours, agent_id) is changed


async def test_a_document_changed_without_a_new_version_is_read_anew(
    agents: tuple[AgentService, Caller, Caller], database: Database
) -> None:
    """The reuse compares the stored text: 1 and true decode to equal values but differ."""
    service, ours, _ = agents
    agent_id = await _new_agent(service, ours)
    await _set_metadata_behind_the_orm(database, ours, agent_id, {"flag": 1})
    before = await service.get(ours, agent_id)
    assert before.agent.metadata_ == {"flag": 1}
    await _set_metadata_behind_the_orm(database, ours, agent_id, {"flag": True})
    after = await service.get(ours, agent_id)
    assert after.agent.metadata_["flag"] is True
    assert after.agent.version == before.agent.version
    assert after.agent.updated_at == before.agent.updated_at


async def _set_metadata_behind_the_orm(
    database: Database, caller: Caller, agent_id: str, metadata: dict[str, Any]
) -> None:
    """Change only the document: same version, same update time (as no Engram write would)."""
    async with database.transaction(caller.organization_id) as session:
        await session.execute(
            update(Agent)
            .where(Agent.id == agent_id)
            .values(metadata_=metadata, updated_at=Agent.updated_at)
            .execution_options(synchronize_session=False)
        )
