"""Schema migrations (Alembic), driven from Python on the server's own engine.

``engram db ...``, the server's startup check and the test suite all come
through here; ``alembic`` on the command line goes through ``alembic/env.py``,
which calls back into :func:`configure_context` and
:func:`open_configured_engine`, so both paths see the same database and the
same options.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import engram
from engram.config.database_choice import choose_database
from engram.config.settings import get_settings
from engram.secrets import KeyRing
from engram.store.engine import create_engine
from engram.store.message_search import is_search_index_object
from engram.store.models import Base
from engram.store.passage_search import is_managed_vector_object
from engram.store.sqlite import WRITE_OPTION
from engram.store.sqlite_planner import ensure_planner_statistics


def migrations_directory() -> Path:
    """Where the migration scripts are: packaged in a wheel, or the checkout's ``alembic/``."""
    package_dir = Path(engram.__file__).resolve().parent
    packaged = package_dir / "_alembic"
    if packaged.is_dir():
        return packaged
    return package_dir.parents[1] / "alembic"


def alembic_config(connection: Connection | None = None, keyring: KeyRing | None = None) -> Config:
    """An Alembic configuration; ``connection`` and ``keyring`` are handed to the scripts."""
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    if connection is not None:
        config.attributes["connection"] = connection
    if keyring is not None:
        config.attributes["keyring"] = keyring
    return config


def configure_context(context: Any, connection: Connection) -> None:
    """Options shared by every migration run and by the drift check."""
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,
        transaction_per_migration=False,
    )


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Leave out of comparisons what the models do not describe on purpose.

    The full-text search index of messages is engine-specific SQL in a
    migration (see :mod:`engram.store.message_search`), not a model; the
    per-dimension vector indexes are created at run time for the widths in
    use (see :mod:`engram.store.passage_search`).
    """
    return not (is_search_index_object(name, type_) or is_managed_vector_object(name))


@contextlib.asynccontextmanager
async def open_configured_engine() -> AsyncIterator[AsyncEngine]:
    """An engine on the database the environment configures, disposed afterwards."""
    settings = get_settings()
    engine = create_engine(choose_database(settings), settings)
    try:
        yield engine.execution_options(**{WRITE_OPTION: True})
    finally:
        await engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revisions() -> set[str]:
    """Every revision this release ships."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return {script.revision for script in scripts.walk_revisions()}


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str | None

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    @property
    def is_empty(self) -> bool:
        return self.current is None


async def schema_state(engine: AsyncEngine) -> SchemaState:
    async with engine.connect() as connection:
        current = await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
    return SchemaState(current=current, head=head_revision())


async def upgrade(
    engine: AsyncEngine, revision: str = "head", *, keyring: KeyRing | None = None
) -> None:
    """Upgrade to ``revision``; ``keyring`` lets data migrations encrypt secrets.

    On SQLite the planner's statistics for new indexes are written too
    (:mod:`engram.store.sqlite_planner`).
    """
    await _run_command(engine, "upgrade", revision, keyring)
    await ensure_planner_statistics(engine)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    await _run_command(engine, "downgrade", revision, None)


async def _run_command(
    engine: AsyncEngine, name: str, revision: str, keyring: KeyRing | None
) -> None:
    writer = engine.execution_options(**{WRITE_OPTION: True})
    async with writer.begin() as connection:
        await connection.run_sync(
            lambda sync: getattr(command, name)(alembic_config(sync, keyring), revision)
        )


async def model_drift(engine: AsyncEngine) -> list[Any]:
    """Differences between the ORM models and the database's schema (empty when in step).

    Run on a database at head, this is the difference between the models and
    the migrations: a non-empty list means a migration is missing.
    """

    def compare(sync: Connection) -> list[Any]:
        context = MigrationContext.configure(
            sync,
            opts={
                "target_metadata": Base.metadata,
                "compare_type": True,
                "include_name": include_name,
                "render_as_batch": sync.dialect.name == "sqlite",
            },
        )
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        return await connection.run_sync(compare)
