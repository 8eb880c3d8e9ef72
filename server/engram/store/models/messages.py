"""The agent's whole conversation (recall memory), in order."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from engram.store.ids import IdPrefix
from engram.store.models.base import Base, OrganizationScoped, PrefixedId, Timestamped
from engram.store.types import JsonDocument


class Message(PrefixedId, Timestamped, OrganizationScoped, Base):
    __tablename__ = "messages"
    id_prefix = IdPrefix.MESSAGE

    agent_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False
    )
    # Position in the agent's history, strictly increasing; timestamps can tie.
    sequence_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    role: Mapped[str] = mapped_column(String(32), nullable=False)
    content: Mapped[list[dict[str, Any]]] = mapped_column(
        JsonDocument, nullable=False, default=list
    )
    # The plain text of the content, kept for full-text search.
    text: Mapped[str] = mapped_column(Text, nullable=False, default="")
    name: Mapped[str | None] = mapped_column(String(200))
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonDocument)
    tool_call_id: Mapped[str | None] = mapped_column(String(200))
    tool_returns: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonDocument)
    run_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("runs.id", ondelete="SET NULL"), index=True
    )
    step_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("steps.id", ondelete="SET NULL"), index=True
    )
    otid: Mapped[str | None] = mapped_column(String(64))
    is_error: Mapped[bool] = mapped_column(nullable=False, default=False)

    __table_args__ = (
        UniqueConstraint("agent_id", "sequence_id"),
        Index(None, "organization_id", "created_at"),
    )
