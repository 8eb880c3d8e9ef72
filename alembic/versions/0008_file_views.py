"""Agents' views of files: which files of attached sources are open, and where.

``file_views`` has one row per (agent, file) the agent opened, with whether
it is open now, the window of lines in view and when it was last opened.
A new table only, so both directions are plain CREATE/DROP on both engines
(no batch copy of any existing table on SQLite).

Revision ID: 0008_file_views
Revises: 0007_archives
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_file_views"
down_revision: str | None = "0007_archives"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "file_views",
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("file_id", sa.String(64), nullable=False),
        sa.Column("is_open", sa.Boolean(), nullable=False),
        sa.Column("start_line", sa.Integer(), nullable=False),
        sa.Column("line_count", sa.Integer(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_file_views_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_file_views_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["files.id"],
            name=op.f("fk_file_views_file_id_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent_id", "file_id", name=op.f("pk_file_views")),
    )
    op.create_index(op.f("ix_file_views_organization_id"), "file_views", ["organization_id"])
    op.create_index(op.f("ix_file_views_file_id"), "file_views", ["file_id"])
    op.create_index("ix_file_views_agent_id_is_open", "file_views", ["agent_id", "is_open"])


def downgrade() -> None:
    op.drop_index("ix_file_views_agent_id_is_open", table_name="file_views")
    op.drop_index(op.f("ix_file_views_file_id"), table_name="file_views")
    op.drop_index(op.f("ix_file_views_organization_id"), table_name="file_views")
    op.drop_table("file_views")
