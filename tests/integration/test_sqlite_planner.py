"""SQLite's planner prefers a real key to the organization index (engram.store.sqlite_planner)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from engram.services.agents import _link_columns
from engram.store.agent_reads import agent_by_id
from engram.store.database import Database
from engram.store.migrations import upgrade
from engram.store.sqlite_planner import (
    ROWS_PER_ORGANIZATION,
    UNSELECTIVE_COLUMNS,
    ensure_planner_statistics,
    organization_index_statistics,
)


@pytest.fixture
def sqlite_database(database: Database) -> Database:
    """The test database, when it is SQLite (the statistics are SQLite's alone)."""
    if not database.choice.is_sqlite:
        pytest.skip("the statistics are SQLite's; PostgreSQL plans from its own")
    return database


def _plan(connection: Connection, sql: str, parameters: tuple[Any, ...]) -> list[str]:
    return [row[3] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters)]


def _keyed_lookups(connection: Connection) -> list[tuple[str, str]]:
    """(table, column) for each scoped table's key column that leads an index of its own."""
    lookups = []
    for (table,) in connection.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ):
        columns = {row[1] for row in connection.exec_driver_sql(f'PRAGMA table_info("{table}")')}
        if "organization_id" not in columns:
            continue
        for index in connection.exec_driver_sql(f'PRAGMA index_list("{table}")').all():
            first = connection.exec_driver_sql(f'PRAGMA index_info("{index[1]}")').first()
            if first is not None and first[2] not in UNSELECTIVE_COLUMNS:
                lookups.append((table, first[2]))
    return sorted(set(lookups))


async def test_a_keyed_lookup_never_searches_the_organization_index(database: Database) -> None:
    if not database.choice.is_sqlite:
        # PostgreSQL keeps statistics of its own: nothing is written there.
        assert await ensure_planner_statistics(database.engine) is False
        return
    async with database.engine.connect() as connection:
        lookups = await connection.run_sync(_keyed_lookups)
        assert ("agent_tags", "agent_id") in lookups
        assert ("messages", "agent_id") in lookups
        for table, column in lookups:
            sql = f'SELECT * FROM "{table}" WHERE "{column}" = ? AND organization_id = ?'
            plan = await connection.run_sync(_plan, sql, ("x", "org"))
            assert not any("organization_id=?)" in step for step in plan), (table, column, plan)


async def test_get_agent_reads_only_the_agents_links(sqlite_database: Database) -> None:
    statement = agent_by_id(_link_columns("sqlite"))
    compiled = statement.compile(dialect=sqlite_database.engine.dialect)
    parameters = tuple("org" if name != "agent_id" else "agent" for name in compiled.positiontup)
    async with sqlite_database.engine.connect() as connection:
        plan = await connection.run_sync(_plan, str(compiled), parameters)
    searches = [step for step in plan if step.startswith("SEARCH")]
    for table in ("agent_tags", "agent_blocks", "agent_tools"):
        (step,) = [step for step in searches if step.startswith(f"SEARCH {table} ")]
        assert "(agent_id=?" in step, plan


async def test_an_organization_wide_listing_still_uses_its_index(sqlite_database: Database) -> None:
    sql = "SELECT id FROM agents WHERE organization_id = ? ORDER BY created_at, id"
    async with sqlite_database.engine.connect() as connection:
        plan = await connection.run_sync(_plan, sql, ("org",))
    assert any("USING INDEX" in step and "organization_id=?" in step for step in plan), plan


async def test_a_listing_filtered_by_status_keeps_to_the_organization(
    sqlite_database: Database,
) -> None:
    sql = (
        "SELECT id FROM runs WHERE organization_id = ? AND status IN ('running', 'completed') "
        "ORDER BY created_at DESC, id DESC LIMIT 50"
    )
    async with sqlite_database.engine.connect() as connection:
        plan = await connection.run_sync(_plan, sql, ("org",))
    assert any("ix_runs_organization_id" in step for step in plan), plan


async def test_a_unique_index_ends_on_one_row(sqlite_database: Database) -> None:
    async with sqlite_database.engine.connect() as connection:
        wanted = await connection.run_sync(organization_index_statistics)
    unique = [stat for (table, index), stat in wanted.items() if index.startswith("sqlite_auto")]
    assert unique, wanted
    assert all(stat.split()[-1] == "1" for stat in unique)
    assert wanted[("agent_tags", "ix_agent_tags_organization_id")] == "1000000 100000"


async def test_a_read_only_database_starts_without_them(
    sqlite_database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "engram.db"
    writable = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await upgrade(writable)
        async with writable.begin() as connection:
            await connection.exec_driver_sql("DELETE FROM sqlite_stat1")
    finally:
        await writable.dispose()
    read_only = create_async_engine(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")
    try:
        with caplog.at_level(logging.WARNING, logger="engram.store.sqlite_planner"):
            assert await ensure_planner_statistics(read_only) is False
    finally:
        await read_only.dispose()
    assert "read-only" in caplog.text
    writable = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        assert await ensure_planner_statistics(writable) is True
    finally:
        await writable.dispose()


async def test_statistics_are_written_once_and_follow_new_indexes(
    sqlite_database: Database,
) -> None:
    # The migrated database already has them.
    assert await ensure_planner_statistics(sqlite_database.engine) is False
    async with sqlite_database.engine.begin() as connection:
        await connection.exec_driver_sql(
            "CREATE INDEX ix_agents_organization_id_model ON agents (organization_id, model)"
        )

    assert await ensure_planner_statistics(sqlite_database.engine) is True
    assert await ensure_planner_statistics(sqlite_database.engine) is False
    async with sqlite_database.engine.connect() as connection:
        stat = (
            await connection.exec_driver_sql(
                "SELECT stat FROM sqlite_stat1 WHERE idx = 'ix_agents_organization_id_model'"
            )
        ).scalar_one()
        wanted = await connection.run_sync(organization_index_statistics)
    assert stat.split()[1] == str(ROWS_PER_ORGANIZATION)
    assert wanted[("agents", "ix_agents_organization_id_model")] == stat
