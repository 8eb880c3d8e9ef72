"""Durable runs: who runs a run (its lease), and whether a client asked to cancel it.

``runs.lease_owner`` names the server process running the run and
``runs.lease_expires_at`` when its claim lapses unless renewed; a running run
whose lease has lapsed belongs to a process that died, and any server ends it
as failed.  ``runs.cancel_requested_at`` records a cancellation asked for on
any replica, for the owner to act on.  Runs left ``running`` by an older
server have no lease and are treated as lapsed.

Columns are added (and dropped) in place on both engines: a batch copy of
``runs`` on SQLite would cascade-delete its steps.

Revision ID: 0009_run_leases
Revises: 0008_file_views
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_run_leases"
down_revision: str | None = "0008_file_views"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEASE_INDEX = "ix_runs_status_lease_expires_at"


def upgrade() -> None:
    op.add_column("runs", sa.Column("lease_owner", sa.String(64), nullable=True))
    op.add_column("runs", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "runs", sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
    )
    # The sweep for lapsed leases reads only running runs.
    op.create_index(LEASE_INDEX, "runs", ["status", "lease_expires_at"])


def downgrade() -> None:
    op.drop_index(LEASE_INDEX, table_name="runs")
    for column in ("cancel_requested_at", "lease_expires_at", "lease_owner"):
        if op.get_bind().dialect.name == "sqlite":
            # In place (SQLite 3.35+); Alembic's SQLite drop_column would need a batch copy.
            op.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        else:
            op.drop_column("runs", column)
