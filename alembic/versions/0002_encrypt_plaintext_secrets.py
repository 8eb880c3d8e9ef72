"""Encrypt any plaintext left in encrypted columns.

Values written by Engram are always encrypted; plaintext can only come from
an import or a hand edit.  This data migration encrypts it with the current
key.  Without a key it changes nothing and says so: reads still work (legacy
plaintext is read as it is), and `engram secrets rotate` finishes the job
once ENGRAM_ENCRYPTION_KEY is set.

The downgrade does nothing: turning secrets back into plaintext would only
weaken the database.

Revision ID: 0002_encrypt_plaintext_secrets
Revises: 0001_initial
Create Date: 2026-11-24
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from engram.config.settings import get_settings
from engram.secrets import KeyRing, load_keyring
from engram.store.secret_columns import rewrite_all_sync

revision: str = "0002_encrypt_plaintext_secrets"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger("alembic.runtime.migration")

# The encrypted columns as they exist at this revision.
COLUMNS = [
    ("providers", "api_key_enc"),
    ("providers", "access_key_enc"),
    ("agent_environment_variables", "value_enc"),
]


def _keyring() -> KeyRing:
    provided = context.config.attributes.get("keyring")
    if isinstance(provided, KeyRing):
        return provided
    keyring, _source = load_keyring(get_settings(), allow_generate=False)
    return keyring


def upgrade() -> None:
    columns = [
        (sa.table(table, sa.column("id"), sa.column(name)), sa.column(name))
        for table, name in COLUMNS
    ]
    keyring = _keyring()
    if keyring.current_key_id is None:
        connection = op.get_bind()
        plaintext = 0
        for table, column in columns:
            values = connection.execute(
                sa.select(table.c[column.name]).where(table.c[column.name].is_not(None))
            ).scalars()
            plaintext += sum(1 for value in values if not keyring.is_encrypted(value))
        if plaintext:
            logger.warning(
                "%d secrets are stored in plaintext and no ENGRAM_ENCRYPTION_KEY is set; "
                "set it and run `engram secrets rotate` to encrypt them",
                plaintext,
            )
        return
    report = rewrite_all_sync(
        op.get_bind(), keyring, [(table, table.c[column.name]) for table, column in columns]
    )
    if report.rewritten:
        logger.info("encrypted %d plaintext secrets", report.rewritten)


def downgrade() -> None:
    pass
