"""Archives get an etag, and an agent at most one default archive.

``archives.version`` is bumped on every update and served as the etag.  The
partial unique index on ``archive_agents (agent_id) WHERE is_default`` is what
makes the lazy creation of an agent's default archive safe: when two first
inserts race, the second link fails on the index and its writer reads the
winner's archive instead of creating another one.

Revision ID: 0007_archives
Revises: 0006_sources
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_archives"
down_revision: str | None = "0006_sources"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_INDEX = "uq_archive_agents_default"


def upgrade() -> None:
    # Adding a column with a constant default is an in-place ALTER on both engines
    # (no table copy on SQLite, so the passages' vector triggers are untouched).
    op.add_column(
        "archives", sa.Column("version", sa.Integer(), nullable=False, server_default="1")
    )
    default = sa.text("is_default = true")
    op.create_index(
        DEFAULT_INDEX,
        "archive_agents",
        ["agent_id"],
        unique=True,
        sqlite_where=default,
        postgresql_where=default,
    )


def downgrade() -> None:
    op.drop_index(DEFAULT_INDEX, table_name="archive_agents")
    if op.get_bind().dialect.name == "sqlite":
        # In place (SQLite 3.35+): a batch copy would drop ``archives``, and with
        # foreign keys on that deletes every passage and link by cascade.
        op.execute("ALTER TABLE archives DROP COLUMN version")
    else:
        op.drop_column("archives", "version")
