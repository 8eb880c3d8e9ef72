"""Encrypted columns: binding to the row, rotation, and the plaintext backfill migration."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from engram.config.database_choice import choose_database
from engram.config.settings import Settings
from engram.secrets import (
    EncryptionKeyMissingError,
    KeyRing,
    MasterKey,
    SecretDecryptionError,
    UnknownEncryptionKeyError,
)
from engram.store.database import Database
from engram.store.engine import create_engine
from engram.store.migrations import downgrade, upgrade
from engram.store.models import Agent, AgentEnvironmentVariable, Organization, Provider
from engram.store.secret_columns import encrypted_columns, read_secret, rotate_secrets, write_secret

OLD = MasterKey.from_passphrase("old key")
NEW = MasterKey.from_passphrase("new key")


async def seed(database: Database, keyring: KeyRing) -> tuple[str, str, str]:
    async with database.transaction(None, all_organizations=True) as session:
        org = Organization(name="secrets")
        session.add(org)
    async with database.transaction(org.id) as session:
        provider = Provider(name="openai", provider_type="openai", id="provider-1")
        write_secret(keyring, provider, "api_key_enc", "sk-live-123")
        agent = Agent(name="a", agent_type="native")
        session.add_all([provider, agent])
        await session.flush()
        variable = AgentEnvironmentVariable(agent_id=agent.id, key="TOKEN", id="agent-env-1")
        write_secret(keyring, variable, "value_enc", "tok-456")
        session.add(variable)
    return org.id, provider.id, variable.id


def test_the_encrypted_columns_are_discovered() -> None:
    found = {f"{table.name}.{column.name}" for table, column in encrypted_columns()}
    assert found == {
        "providers.api_key_enc",
        "providers.access_key_enc",
        "agent_environment_variables.value_enc",
    }


async def test_values_are_stored_encrypted_and_read_back(database: Database) -> None:
    keyring = KeyRing(current=NEW)
    org, provider_id, _ = await seed(database, keyring)
    async with database.engine.connect() as connection:
        raw = await connection.scalar(text("SELECT api_key_enc FROM providers"))
    assert raw.startswith("engram:v1:") and "sk-live" not in raw
    async with database.read(org) as session:
        provider = await session.get(Provider, provider_id)
        assert provider is not None
        assert read_secret(keyring, provider, "api_key_enc") == "sk-live-123"


async def test_a_ciphertext_moved_to_another_row_does_not_decrypt(database: Database) -> None:
    keyring = KeyRing(current=NEW)
    org, provider_id, _ = await seed(database, keyring)
    async with database.transaction(org) as session:
        original = await session.get(Provider, provider_id)
        assert original is not None
        copy = Provider(name="copy", provider_type="openai", api_key_enc=original.api_key_enc)
        session.add(copy)
        # And to another column of the same row.
        original.access_key_enc = original.api_key_enc
    async with database.read(org) as session:
        copy_row = (await session.scalars(select(Provider).where(Provider.name == "copy"))).one()
        with pytest.raises(SecretDecryptionError):
            read_secret(keyring, copy_row, "api_key_enc")
        original_row = await session.get(Provider, provider_id)
        assert original_row is not None
        with pytest.raises(SecretDecryptionError):
            read_secret(keyring, original_row, "access_key_enc")


async def test_rotation_rewrites_everything_under_the_new_key(database: Database) -> None:
    org, provider_id, variable_id = await seed(database, KeyRing(current=OLD))
    # Without the old key the values cannot be read...
    async with database.read(org) as session:
        provider = await session.get(Provider, provider_id)
        assert provider is not None
        with pytest.raises(UnknownEncryptionKeyError):
            read_secret(KeyRing(current=NEW), provider, "api_key_enc")
    # ... with it among the previous keys they can, and rotation moves them to the new key.
    rotating = KeyRing(current=NEW, previous=[OLD])
    report = await rotate_secrets(database, rotating)
    assert report.rewritten == 2 and report.failed == []
    assert (await rotate_secrets(database, rotating)).rewritten == 0
    only_new = KeyRing(current=NEW)
    async with database.read(org) as session:
        provider = await session.get(Provider, provider_id)
        variable = await session.get(AgentEnvironmentVariable, variable_id)
        assert provider is not None and variable is not None
        assert read_secret(only_new, provider, "api_key_enc") == "sk-live-123"
        assert read_secret(only_new, variable, "value_enc") == "tok-456"


async def test_rotation_needs_a_current_key(database: Database) -> None:
    with pytest.raises(EncryptionKeyMissingError):
        await rotate_secrets(database, KeyRing(current=None))


async def test_legacy_plaintext_reads_and_the_backfill_encrypts_it(settings: Settings) -> None:
    choice = choose_database(settings)
    database = Database(create_engine(choice, settings), choice)
    keyring = KeyRing(current=NEW)
    try:
        org, provider_id, _ = await seed(database, keyring)
        # A value from an older deployment or a hand edit: plaintext in an encrypted column.
        async with database.engine.connect() as connection:
            await connection.execute(
                text("UPDATE providers SET api_key_enc = 'sk-legacy' WHERE id = :id"),
                {"id": provider_id},
            )
            await connection.commit()
        async with database.read(org) as session:
            provider = await session.get(Provider, provider_id)
            assert provider is not None
            assert read_secret(keyring, provider, "api_key_enc") == "sk-legacy"  # dual read
        # Re-running the backfill step encrypts it in place.
        await downgrade(database.engine, "0001_initial")
        await upgrade(database.engine, keyring=keyring)
        async with database.engine.connect() as connection:
            raw = await connection.scalar(text("SELECT api_key_enc FROM providers"))
        assert raw.startswith("engram:v1:")
        async with database.read(org) as session:
            provider = await session.get(Provider, provider_id)
            assert provider is not None
            assert read_secret(keyring, provider, "api_key_enc") == "sk-legacy"
    finally:
        await database.dispose()


async def test_without_a_key_secrets_are_refused_not_stored_in_plaintext(
    database: Database,
) -> None:
    async with database.transaction(None, all_organizations=True) as session:
        org = Organization(name="nokey")
        session.add(org)
    provider = Provider(name="p", provider_type="openai", id="provider-2", organization_id=org.id)
    with pytest.raises(EncryptionKeyMissingError) as caught:
        write_secret(KeyRing(current=None), provider, "api_key_enc", "sk-nope")
    assert "ENGRAM_ENCRYPTION_KEY" in str(caught.value)
    assert provider.api_key_enc is None


def test_engram_secrets_rotate_command(settings: Settings) -> None:
    import asyncio
    import os
    import subprocess
    import sys
    from pathlib import Path

    async def seed_with_old_key() -> None:
        choice = choose_database(settings)
        database = Database(create_engine(choice, settings), choice)
        try:
            await seed(database, KeyRing(current=OLD))
        finally:
            await database.dispose()

    asyncio.run(seed_with_old_key())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGRAM_", "LETTA_"))}
    if settings.pg_uri is not None:
        env["ENGRAM_PG_URI"] = settings.pg_uri.get_secret_value()
    else:
        env["ENGRAM_SQLITE_PATH"] = str(settings.sqlite_path)
    env["LETTA_ENCRYPTION_KEY"] = "new key"
    env["ENGRAM_ENCRYPTION_KEYS_PREVIOUS"] = "old key"
    result = subprocess.run(
        [sys.executable, "-m", "engram.cli", "secrets", "rotate"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert "providers.api_key_enc: 1 re-encrypted" in result.stdout
    assert "agent_environment_variables.value_enc: 1 re-encrypted" in result.stdout
