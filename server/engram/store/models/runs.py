"""Runs (one per turn) and steps (one per LLM call within a run)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from engram.store.ids import IdPrefix
from engram.store.models.base import Base, OrganizationScoped, PrefixedId, Timestamped
from engram.store.types import JsonDocument, UtcDateTime


class Run(PrefixedId, Timestamped, OrganizationScoped, Base):
    __tablename__ = "runs"
    id_prefix = IdPrefix.RUN

    agent_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False
    )
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    stop_reason: Mapped[str | None] = mapped_column(String(64))
    background: Mapped[bool] = mapped_column(nullable=False, default=False)
    # The client's idempotency key for the request that started the run.
    request_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JsonDocument, nullable=False, default=dict
    )
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # The server process running the run, and when its claim lapses unless it
    # renews it; a running run with a lapsed lease belongs to a dead process.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # When a client asked to cancel the run (from any replica).
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    __table_args__ = (
        UniqueConstraint("organization_id", "request_id"),
        Index(None, "agent_id", "status"),
        Index("ix_runs_status_lease_expires_at", "status", "lease_expires_at"),
    )


class Step(PrefixedId, Timestamped, OrganizationScoped, Base):
    __tablename__ = "steps"
    id_prefix = IdPrefix.STEP

    run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    agent_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False, index=True
    )
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    provider: Mapped[str | None] = mapped_column(String(100))
    model: Mapped[str | None] = mapped_column(String(300))
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
