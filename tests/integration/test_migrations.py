"""Alembic migrations on both engines, and the rules the server applies at startup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from engram.config.database_choice import choose_database
from engram.config.settings import Settings
from engram.services.startup import open_storage
from engram.store.diagnostics import StartupError
from engram.store.engine import create_engine
from engram.store.migrations import downgrade, head_revision, model_drift, schema_state, upgrade
from engram.store.models import Base

REPO = Path(__file__).resolve().parents[2]


async def test_upgrade_downgrade_upgrade(blank_settings: Settings) -> None:
    engine = create_engine(choose_database(blank_settings), blank_settings)
    try:
        assert (await schema_state(engine)).is_empty
        await upgrade(engine)
        state = await schema_state(engine)
        assert state.at_head and state.current == head_revision()
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert set(Base.metadata.tables) <= tables
        assert await model_drift(engine) == []

        await downgrade(engine, "base")
        assert (await schema_state(engine)).is_empty
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert tables & set(Base.metadata.tables) == set()

        await upgrade(engine)
        assert (await schema_state(engine)).at_head
        assert await model_drift(engine) == []
    finally:
        await engine.dispose()


async def test_sqlite_default_upgrades_itself(tmp_path: Path) -> None:
    settings = Settings(sqlite_path=tmp_path / "auto.db")
    storage = await open_storage(settings)
    try:
        assert (await schema_state(storage.database.engine)).at_head
    finally:
        await storage.close()


@pytest.mark.parametrize("engine_kind", ["postgresql"], indirect=True)
async def test_postgres_behind_head_is_refused(blank_settings: Settings) -> None:
    with pytest.raises(StartupError) as caught:
        await open_storage(blank_settings)
    assert "engram db upgrade" in str(caught.value)
    # ... unless the operator asked for upgrades at startup.
    storage = await open_storage(blank_settings.model_copy(update={"auto_migrate": True}))
    try:
        assert (await schema_state(storage.database.engine)).at_head
    finally:
        await storage.close()


def engram_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGRAM_", "LETTA_"))}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "engram.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        cwd=REPO,
    )


def cli_env(settings: Settings) -> dict[str, str]:
    if settings.pg_uri is not None:
        return {"ENGRAM_PG_URI": settings.pg_uri.get_secret_value()}
    return {"ENGRAM_SQLITE_PATH": str(settings.sqlite_path)}


def test_cli_db_commands(blank_settings: Settings) -> None:
    env = cli_env(blank_settings)
    current = engram_cli("db", "current", env=env)
    assert current.returncode == 0, current.stderr
    assert current.stdout.startswith("empty")
    check = engram_cli("db", "check", env=env)
    assert check.returncode == 1
    assert "engram db upgrade" in check.stderr

    up = engram_cli("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    assert engram_cli("db", "current", env=env).stdout.strip() == f"{head_revision()} (head)"
    check = engram_cli("db", "check", env=env)
    assert check.returncode == 0, check.stderr

    down = engram_cli("db", "downgrade", "base", env=env)
    assert down.returncode == 0, down.stderr
    assert engram_cli("db", "current", env=env).stdout.startswith("empty")


def test_alembic_command_line_uses_the_same_settings(blank_settings: Settings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGRAM_", "LETTA_"))}
    env.update(cli_env(blank_settings))
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert engram_cli("db", "current", env=cli_env(blank_settings)).stdout.strip() == (
        f"{head_revision()} (head)"
    )


def test_cli_db_check_reports_drift(tmp_path: Path) -> None:
    """A model change without a migration makes `engram db check` fail."""
    env = {"ENGRAM_SQLITE_PATH": str(tmp_path / "drift.db")}
    assert engram_cli("db", "upgrade", env=env).returncode == 0
    script = (
        "import sys, sqlalchemy as sa\n"
        "from engram.store.models import Base\n"
        "sa.Table('unmigrated', Base.metadata, sa.Column('id', sa.Integer, primary_key=True))\n"
        "from engram.cli import main\n"
        "sys.exit(main(['db', 'check']))\n"
    )
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGRAM_", "LETTA_"))}
    full_env.update(env)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=full_env, timeout=120
    )
    assert result.returncode == 1
    assert "unmigrated" in result.stderr


async def test_downgrades_keep_the_rows_of_tables_they_keep(settings: Settings) -> None:
    """Every downgrade step leaves agents, messages and passages where it found them.

    On SQLite a batch "drop column" recreates the table; with foreign keys on,
    dropping the old table deletes every child row by cascade.  Downgrades must
    drop columns in place instead.
    """
    from engram.services.admin import ensure_default_identity
    from engram.services.agents import AgentService, NewAgent
    from engram.store.database import Database
    from engram.store.models import Archive, Message, Passage

    choice = choose_database(settings)
    database = Database(create_engine(choice, settings), choice)
    try:
        caller = await ensure_default_identity(database)
        view = await AgentService(database).create(
            caller,
            NewAgent(
                values={"display_name": "kept", "agent_type": "native", "model": "openai/m"},
                memory_blocks=[{"label": "human", "value": "Ada", "limit": 100}],
                tool_names=[],
                include_base_tools=False,
            ),
            request_id="",
        )
        async with database.transaction(caller.organization_id) as session:
            session.add(
                Message(
                    agent_id=view.agent.id,
                    sequence_id=1,
                    role="user",
                    content=[{"type": "text", "text": "hello"}],
                    text="hello",
                )
            )
            archive = Archive(name="a")
            session.add(archive)
            await session.flush()
            session.add(
                Passage(archive_id=archive.id, text="p", embedding=[1.0, 0.0], embedding_dim=2)
            )

        def counts(connection: Any) -> dict[str, int]:
            present = set(inspect(connection).get_table_names())
            return {
                table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("agents", "messages", "passages", "agent_blocks")
                if table in present
            }

        async with database.engine.connect() as connection:
            before = await connection.run_sync(counts)
        assert before == {"agents": 1, "messages": 1, "passages": 1, "agent_blocks": 1}
        await database.engine.dispose()
        await downgrade(database.engine, "0003_idempotency_keys")
        async with database.engine.connect() as connection:
            after = await connection.run_sync(counts)
        assert after == before
    finally:
        await database.dispose()
