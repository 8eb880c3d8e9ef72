"""Driver errors become the same typed store errors on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from sqlalchemy import select, text

from engram.config.database_choice import choose_database
from engram.config.settings import Settings
from engram.store.database import Database
from engram.store.engine import create_engine
from engram.store.errors import (
    ConcurrentUpdateError,
    DatabaseTimeoutError,
    DeadlockError,
    ForeignKeyViolationError,
    LockNotAvailableError,
    NotNullViolationError,
    UniqueViolationError,
)
from engram.store.models import Agent, AgentBlock, Block, Organization, Tool


async def make_org(database: Database, name: str = "acme") -> str:
    async with database.transaction(None, all_organizations=True) as session:
        org = Organization(name=name)
        session.add(org)
    return org.id


async def test_unique_violation_names_the_constraint(database: Database) -> None:
    org = await make_org(database)
    async with database.transaction(org) as session:
        session.add(Tool(name="search", tool_type="custom"))
    with pytest.raises(UniqueViolationError) as caught:
        async with database.transaction(org) as session:
            session.add(Tool(name="search", tool_type="custom"))
    assert caught.value.constraint == "uq_tools_organization_id_name"
    assert caught.value.table == "tools"
    assert set(caught.value.columns) == {"organization_id", "name"}
    assert caught.value.reason == "ALREADY_EXISTS"


async def test_foreign_key_violation_names_the_missing_reference(database: Database) -> None:
    org = await make_org(database)
    async with database.transaction(org) as session:
        agent = Agent(name="a", agent_type="native")
        session.add(agent)
    with pytest.raises(ForeignKeyViolationError) as caught:
        async with database.transaction(org) as session:
            session.add(
                AgentBlock(agent_id=agent.id, block_id="block-missing", block_label="human")
            )
    assert caught.value.table == "agent_blocks"
    assert caught.value.constraint == "fk_agent_blocks_block_id_blocks"
    assert caught.value.reason == "REFERENCED_RESOURCE_MISSING"


async def test_not_null_violation_names_the_column(database: Database) -> None:
    org = await make_org(database)
    with pytest.raises(NotNullViolationError) as caught:
        async with database.transaction(org) as session:
            await session.execute(
                Tool.__table__.insert().values(
                    id="tool-x",
                    organization_id=org,
                    name=None,
                    tool_type="custom",
                    description="",
                    json_schema={},
                    tags=[],
                    return_char_limit=1,
                    default_requires_approval=False,
                    metadata={},
                    created_at=Tool.__table__.c.created_at.default.arg(None),
                    updated_at=Tool.__table__.c.updated_at.default.arg(None),
                )
            )
    assert caught.value.columns == ("name",)
    assert caught.value.table == "tools"


async def test_a_failed_transaction_leaves_nothing_behind(database: Database) -> None:
    org = await make_org(database)
    with pytest.raises(UniqueViolationError):
        async with database.transaction(org) as session:
            session.add(Block(label="human", value="first"))
            await session.flush()
            session.add(Tool(name="t", tool_type="custom"))
            await session.flush()
            session.add(Tool(name="t", tool_type="custom"))
    async with database.read(org) as session:
        assert (await session.scalars(select(Block))).all() == []
        assert (await session.scalars(select(Tool))).all() == []


async def test_stale_version_is_a_concurrent_update(database: Database) -> None:
    org = await make_org(database)
    async with database.transaction(org) as session:
        block = Block(label="persona", value="v1")
        session.add(block)
    with pytest.raises(ConcurrentUpdateError):
        async with database.transaction(org) as session:
            loaded = await session.get(Block, block.id)
            assert loaded is not None
            # Someone else's write lands between this read and this write.
            await session.execute(
                text("UPDATE blocks SET version = version + 1 WHERE id = :id"), {"id": block.id}
            )
            loaded.value = "v2"
    async with database.read(org) as session:
        current = await session.get(Block, block.id)
        assert current is not None and current.value == "v1"


async def test_pool_timeout_is_a_database_timeout(engine_kind: str, settings: Settings) -> None:
    tight = settings.model_copy(
        update={"pg_pool_size": 1, "pg_max_overflow": 0, "pg_pool_timeout": 0.2}
    )
    choice = choose_database(tight)
    database = Database(create_engine(choice, tight), choice)
    if engine_kind == "sqlite":
        # SQLite's pool size is fixed by the engine module; exhaust all of it.
        held = [await database.engine.connect() for _ in range(database.engine.pool.size())]
    else:
        held = [await database.engine.connect()]
    try:
        with pytest.raises(DatabaseTimeoutError) as caught:
            async with database.read(None) as session:
                await session.execute(text("SELECT 1"))
        assert caught.value.kind == "pool"
        assert "ENGRAM_PG_POOL_SIZE" in caught.value.message
    finally:
        for connection in held:
            await connection.close()
        await database.dispose()


async def test_lock_not_available(engine_kind: str, database: Database) -> None:
    org = await make_org(database)
    async with database.transaction(org) as session:
        session.add(Block(label="human", value="x"))
    if engine_kind == "postgresql":
        async with database.engine.connect() as holder:
            await holder.execute(text("SELECT id FROM blocks FOR UPDATE"))
            with pytest.raises(LockNotAvailableError):
                async with database.transaction(org) as session:
                    await session.execute(select(Block).with_for_update(nowait=True))
            await holder.rollback()
        return
    # SQLite: another process holds the write lock for longer than the busy timeout.
    # (It must be another process: POSIX file locks never conflict within one.)
    assert database.choice.sqlite_path is not None
    holder_script = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    outsider = subprocess.Popen(  # noqa: ASYNC220 - a helper process, started once
        [sys.executable, "-c", holder_script, str(database.choice.sqlite_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    impatient = Settings(sqlite_path=database.choice.sqlite_path, sqlite_busy_timeout_ms=100)
    choice = choose_database(impatient)
    other = Database(create_engine(choice, impatient), choice)
    try:
        assert outsider.stdout is not None
        assert outsider.stdout.readline().strip() == "locked"
        with pytest.raises(LockNotAvailableError):
            async with other.transaction(org) as session:
                session.add(Block(label="persona", value="y"))
    finally:
        outsider.communicate("", timeout=10)
        await other.dispose()


async def test_deadlock_is_retried_with_backoff(engine_kind: str, database: Database) -> None:
    if engine_kind == "sqlite":
        pytest.skip("SQLite serialises writers, so two transactions can never deadlock")
    org = await make_org(database)
    async with database.transaction(org) as session:
        first, second = Block(label="a", value="1"), Block(label="b", value="2")
        session.add_all([first, second])
    both_locked_first = asyncio.Barrier(2)
    attempts = {"left": 0, "right": 0}

    def crossing(name: str, mine: str, theirs: str):  # type: ignore[no-untyped-def]
        async def work(session):  # type: ignore[no-untyped-def]
            attempts[name] += 1
            await session.execute(
                text("UPDATE blocks SET value = value || 'x' WHERE id = :id"), {"id": mine}
            )
            if attempts[name] == 1:
                await both_locked_first.wait()
            await session.execute(
                text("UPDATE blocks SET value = value || 'y' WHERE id = :id"), {"id": theirs}
            )
            return attempts[name]

        return work

    results = await asyncio.gather(
        database.run_transaction(crossing("left", first.id, second.id), org),
        database.run_transaction(crossing("right", second.id, first.id), org),
    )
    # PostgreSQL aborted exactly one of them with a deadlock; it ran again and succeeded.
    assert sorted(results) == [1, 2]


async def test_deadlock_surfaces_after_the_last_attempt(
    engine_kind: str, database: Database
) -> None:
    calls = 0

    async def always_deadlocks(session):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        raise DeadlockError("simulated")

    with pytest.raises(DeadlockError):
        await database.run_transaction(always_deadlocks, None, attempts=3)
    assert calls == 3


async def test_statement_timeout(engine_kind: str, settings: Settings) -> None:
    if engine_kind == "sqlite":
        pytest.skip("SQLite has no server-side statement timeout")
    timed = settings.model_copy(update={"pg_statement_timeout_ms": 100})
    choice = choose_database(timed)
    database = Database(create_engine(choice, timed), choice)
    try:
        with pytest.raises(DatabaseTimeoutError) as caught:
            async with database.read(None) as session:
                await session.execute(text("SELECT pg_sleep(2)"))
        assert caught.value.kind == "statement"
    finally:
        await database.dispose()
