"""Data sources: folders of uploaded files, ingested into passages.

Adds ``sources`` (each owns an archive, marked ``kind = 'source'``),
``files`` (one row per upload with its ingestion state and extracted text),
``file_contents`` (the uploaded bytes until ingestion ends),
``source_agents`` (attachments) and ``passages.file_id``.

On SQLite, adding (and dropping) ``passages.file_id`` with its foreign key
takes a batch "move and copy" of ``passages``, which drops the triggers that
keep the per-dimension vector tables in step; both directions therefore drop
the vector tables first, and the server rebuilds them from ``passages`` the
first time it needs each (``VectorIndexes.ensure``).

Revision ID: 0006_sources
Revises: 0005_message_search
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_sources"
down_revision: str | None = "0005_message_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in engram.store.passage_search; copied so that this script stays valid if that module moves.
SQLITE_VECTOR_PREFIX = "passage_vectors_"


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def _organization() -> sa.Column[object]:
    return sa.Column("organization_id", sa.String(64), nullable=False)


def _organization_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["organization_id"],
        ["organizations.id"],
        name=op.f(f"fk_{table}_organization_id_organizations"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.add_column(
        "archives",
        sa.Column("kind", sa.String(16), nullable=False, server_default="agent"),
    )
    op.create_table(
        "sources",
        sa.Column("id", sa.String(64), nullable=False),
        _organization(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("embedding", sa.String(300), nullable=False),
        sa.Column("archive_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["archive_id"],
            ["archives.id"],
            name=op.f("fk_sources_archive_id_archives"),
            ondelete="RESTRICT",
        ),
        _organization_fk("sources"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sources")),
        sa.UniqueConstraint(
            "organization_id", "name", name=op.f("uq_sources_organization_id_name")
        ),
    )
    op.create_index(op.f("ix_sources_organization_id"), "sources", ["organization_id"])
    op.create_index(op.f("ix_sources_archive_id"), "sources", ["archive_id"])

    op.create_table(
        "files",
        sa.Column("id", sa.String(64), nullable=False),
        _organization(),
        sa.Column("source_id", sa.String(64), nullable=False),
        sa.Column("file_name", sa.String(500), nullable=False),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("chunks_total", sa.Integer(), nullable=False),
        sa.Column("chunks_done", sa.Integer(), nullable=False),
        sa.Column("page_count", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["sources.id"],
            name=op.f("fk_files_source_id_sources"),
            ondelete="CASCADE",
        ),
        _organization_fk("files"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
        sa.UniqueConstraint("source_id", "file_name", name=op.f("uq_files_source_id_file_name")),
    )
    op.create_index(op.f("ix_files_organization_id"), "files", ["organization_id"])
    op.create_index(op.f("ix_files_source_id"), "files", ["source_id"])

    op.create_table(
        "file_contents",
        _organization(),
        sa.Column("file_id", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["files.id"],
            name=op.f("fk_file_contents_file_id_files"),
            ondelete="CASCADE",
        ),
        _organization_fk("file_contents"),
        sa.PrimaryKeyConstraint("file_id", name=op.f("pk_file_contents")),
    )
    op.create_index(op.f("ix_file_contents_organization_id"), "file_contents", ["organization_id"])

    op.create_table(
        "source_agents",
        _organization(),
        sa.Column("source_id", sa.String(64), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["sources.id"],
            name=op.f("fk_source_agents_source_id_sources"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_source_agents_agent_id_agents"),
            ondelete="CASCADE",
        ),
        _organization_fk("source_agents"),
        sa.PrimaryKeyConstraint("source_id", "agent_id", name=op.f("pk_source_agents")),
    )
    op.create_index(op.f("ix_source_agents_organization_id"), "source_agents", ["organization_id"])
    op.create_index(op.f("ix_source_agents_agent_id"), "source_agents", ["agent_id"])

    if op.get_bind().dialect.name == "sqlite":
        # The batch copy of passages drops the vector tables' triggers; drop
        # the tables too, so that the server rebuilds them from passages.
        _drop_sqlite_vector_tables()
        with op.batch_alter_table("passages") as batch:
            batch.add_column(sa.Column("file_id", sa.String(64), nullable=True))
            batch.create_foreign_key(
                op.f("fk_passages_file_id_files"), "files", ["file_id"], ["id"], ondelete="CASCADE"
            )
    else:
        op.add_column("passages", sa.Column("file_id", sa.String(64), nullable=True))
        op.create_foreign_key(
            op.f("fk_passages_file_id_files"),
            "passages",
            "files",
            ["file_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.create_index(op.f("ix_passages_file_id"), "passages", ["file_id"])


def _drop_sqlite_vector_tables() -> None:
    """Drop the per-dimension vec0 tables and their triggers (rebuilt on demand)."""
    bind = op.get_bind()
    names = bind.execute(
        sa.text(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE :prefix "
            "AND sql LIKE '%USING vec0%'"
        ),
        {"prefix": f"{SQLITE_VECTOR_PREFIX}%"},
    ).scalars()
    for name in list(names):
        for suffix in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}_{suffix}")
        op.execute(f"DROP TABLE IF EXISTS {name}")


def downgrade() -> None:
    op.drop_index(op.f("ix_passages_file_id"), table_name="passages")
    if op.get_bind().dialect.name == "sqlite":
        _drop_sqlite_vector_tables()
        with op.batch_alter_table("passages") as batch:
            batch.drop_column("file_id")
    else:
        op.drop_constraint(op.f("fk_passages_file_id_files"), "passages", type_="foreignkey")
        op.drop_column("passages", "file_id")
    op.drop_index(op.f("ix_source_agents_agent_id"), table_name="source_agents")
    op.drop_index(op.f("ix_source_agents_organization_id"), table_name="source_agents")
    op.drop_table("source_agents")
    op.drop_index(op.f("ix_file_contents_organization_id"), table_name="file_contents")
    op.drop_table("file_contents")
    op.drop_index(op.f("ix_files_source_id"), table_name="files")
    op.drop_index(op.f("ix_files_organization_id"), table_name="files")
    op.drop_table("files")
    op.drop_index(op.f("ix_sources_archive_id"), table_name="sources")
    op.drop_index(op.f("ix_sources_organization_id"), table_name="sources")
    op.drop_table("sources")
    if op.get_bind().dialect.name == "sqlite":
        # In place (SQLite 3.35+): a batch copy would drop ``archives``, and with
        # foreign keys on that deletes every passage and link by cascade.
        op.execute("ALTER TABLE archives DROP COLUMN kind")
    else:
        op.drop_column("archives", "kind")
