"""Each agent's in-context message buffer starts at a sequence number.

The buffer is every message of the agent from ``context_start_sequence`` on;
resetting it moves the start past the last message, so the history stays
searchable while the model stops seeing it.

Revision ID: 0004_message_buffer
Revises: 0003_idempotency_keys
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_message_buffer"
down_revision: str | None = "0003_idempotency_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The server default fills existing agents: their whole history is in the buffer.
    with op.batch_alter_table("agents") as batch:
        batch.add_column(
            sa.Column("context_start_sequence", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    # In place on SQLite too (3.35+): a batch copy would drop ``agents``, and with
    # foreign keys on that deletes every message, run and link by cascade.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE agents DROP COLUMN context_start_sequence")
    else:
        op.drop_column("agents", "context_start_sequence")
