"""Opening storage for a server process or a maintenance command.

Everything a process needs before it may serve: the engine the settings
choose, a working connection, pgvector where it is required, the schema at
the revision this code expects, and the key ring for secrets.  Every failure
is a :class:`StartupError` (or a :class:`ConfigurationError`) that says what
to change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from engram.config.database_choice import DatabaseChoice, choose_database
from engram.config.settings import Settings
from engram.secrets import KeyRing, KeySource, load_keyring
from engram.store.database import Database
from engram.store.diagnostics import StartupError, check_connection, check_vector_support
from engram.store.engine import create_engine
from engram.store.migrations import SchemaState, known_revisions, schema_state, upgrade
from engram.store.sqlite_planner import ensure_planner_statistics

logger = logging.getLogger(__name__)


@dataclass
class Storage:
    """Storage ready for use: the database and the key ring for its secrets."""

    database: Database
    keyring: KeyRing
    key_source: KeySource

    @property
    def choice(self) -> DatabaseChoice:
        return self.database.choice

    async def close(self) -> None:
        await self.database.dispose()


def should_auto_migrate(settings: Settings, choice: DatabaseChoice) -> bool:
    """Upgrade at startup when asked to, and by default on the embedded SQLite database only.

    A shared PostgreSQL is upgraded deliberately (``engram db upgrade``), so
    that several replicas never race to migrate it and an operator decides
    when the schema changes.
    """
    if settings.auto_migrate is not None:
        return settings.auto_migrate
    return choice.is_sqlite


async def open_storage(settings: Settings, *, require_schema: bool = True) -> Storage:
    """Connect, check and (where allowed) migrate; raise a clear error otherwise."""
    choice = choose_database(settings)
    keyring, key_source = load_keyring(settings, allow_generate=choice.is_sqlite)
    if key_source is KeySource.GENERATED:
        logger.warning(
            "no ENGRAM_ENCRYPTION_KEY is set: generated a random key for secrets at %s "
            "(mode 0600); back it up with the database, or set ENGRAM_ENCRYPTION_KEY",
            settings.resolved_encryption_key_file,
        )
    elif key_source is KeySource.NONE:
        logger.warning(
            "no ENGRAM_ENCRYPTION_KEY is set: this server will refuse to store secrets "
            "(provider keys, tool environment variables) until one is configured"
        )
    database = Database(create_engine(choice, settings), choice)
    try:
        await check_connection(database.engine, choice)
        await check_vector_support(database.engine, choice)
        if require_schema:
            await _bring_schema_to_head(database, settings, keyring)
            await ensure_planner_statistics(database.engine)
    except BaseException:
        await database.dispose()
        raise
    logger.info("storage ready: %s (%s)", choice.engine.value, choice.redacted_url)
    return Storage(database=database, keyring=keyring, key_source=key_source)


async def _bring_schema_to_head(database: Database, settings: Settings, keyring: KeyRing) -> None:
    state = await schema_state(database.engine)
    if state.at_head:
        return
    if state.current is not None and state.current not in known_revisions():
        raise StartupError(
            f"the database schema is at revision {state.current}, which this version of "
            "Engram does not know: it was migrated by a newer release. Run that release, "
            "or restore a backup taken before the upgrade."
        )
    if should_auto_migrate(settings, database.choice):
        logger.info("upgrading the database schema from %s to %s", state.current, state.head)
        await upgrade(database.engine, keyring=keyring)
        return
    raise StartupError(_behind_head_message(state))


def _behind_head_message(state: SchemaState) -> str:
    where = "empty" if state.is_empty else f"at revision {state.current}"
    return (
        f"the database schema is {where}, but this server needs revision {state.head}. "
        "Run `engram db upgrade` (or `alembic upgrade head`) against it first, "
        "or set ENGRAM_AUTO_MIGRATE=true to upgrade at startup."
    )
