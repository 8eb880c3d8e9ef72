"""SQLite's planner prefers a real key to the organization index (engram.store.sqlite_planner)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Connection

from engram.services.agents import _link_columns
from engram.store.agent_reads import agent_by_id
from engram.store.database import Database
from engram.store.sqlite_planner import (
    ROWS_PER_ORGANIZATION,
    ensure_planner_statistics,
    organization_index_statistics,
)


def _plan(connection: Connection, sql: str, parameters: tuple[Any, ...]) -> list[str]:
    return [row[3] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters)]


def _keyed_lookups(connection: Connection) -> list[tuple[str, str]]:
    """(table, column) for each scoped table's column that leads an index of its own."""
    lookups = []
    for (table,) in connection.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ):
        columns = {row[1] for row in connection.exec_driver_sql(f'PRAGMA table_info("{table}")')}
        if "organization_id" not in columns:
            continue
        for index in connection.exec_driver_sql(f'PRAGMA index_list("{table}")').all():
            first = connection.exec_driver_sql(f'PRAGMA index_info("{index[1]}")').first()
            if first is not None and first[2] != "organization_id":
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


async def test_get_agent_reads_only_the_agents_links(database: Database) -> None:
    if not database.choice.is_sqlite:
        pytest.skip("the statistics are SQLite's; PostgreSQL plans from its own")
    statement = agent_by_id(_link_columns("sqlite"))
    compiled = statement.compile(dialect=database.engine.dialect)
    parameters = tuple("org" if name != "agent_id" else "agent" for name in compiled.positiontup)
    async with database.engine.connect() as connection:
        plan = await connection.run_sync(_plan, str(compiled), parameters)
    searches = [step for step in plan if step.startswith("SEARCH")]
    for table in ("agent_tags", "agent_blocks", "agent_tools"):
        (step,) = [step for step in searches if step.startswith(f"SEARCH {table} ")]
        assert "(agent_id=?" in step, plan


async def test_an_organization_wide_listing_still_uses_its_index(database: Database) -> None:
    if not database.choice.is_sqlite:
        pytest.skip("the statistics are SQLite's; PostgreSQL plans from its own")
    sql = "SELECT id FROM agents WHERE organization_id = ? ORDER BY created_at, id"
    async with database.engine.connect() as connection:
        plan = await connection.run_sync(_plan, sql, ("org",))
    assert any("USING INDEX" in step and "organization_id=?" in step for step in plan), plan


async def test_statistics_are_written_once_and_follow_new_indexes(database: Database) -> None:
    if not database.choice.is_sqlite:
        pytest.skip("the statistics are SQLite's; PostgreSQL plans from its own")
    # The migrated database already has them.
    assert await ensure_planner_statistics(database.engine) is False
    async with database.engine.begin() as connection:
        await connection.exec_driver_sql(
            "CREATE INDEX ix_agents_organization_id_model ON agents (organization_id, model)"
        )

    assert await ensure_planner_statistics(database.engine) is True
    assert await ensure_planner_statistics(database.engine) is False
    async with database.engine.connect() as connection:
        stat = (
            await connection.exec_driver_sql(
                "SELECT stat FROM sqlite_stat1 WHERE idx = 'ix_agents_organization_id_model'"
            )
        ).scalar_one()
        wanted = await connection.run_sync(organization_index_statistics)
    assert stat.split()[1] == str(ROWS_PER_ORGANIZATION)
    assert wanted[("agents", "ix_agents_organization_id_model")] == stat
