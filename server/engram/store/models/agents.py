"""Agents and the links that give them memory blocks, tools and tags."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from engram.store.ids import IdPrefix
from engram.store.models.base import Base, OrganizationScoped, PrefixedId, Timestamped
from engram.store.types import JsonDocument


class Agent(PrefixedId, Timestamped, OrganizationScoped, Base):
    __tablename__ = "agents"
    id_prefix = IdPrefix.AGENT

    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    system: Mapped[str] = mapped_column(Text, nullable=False, default="")
    agent_type: Mapped[str] = mapped_column(String(64), nullable=False)
    # Model handles are "provider/model-name".
    model: Mapped[str | None] = mapped_column(String(300))
    model_settings: Mapped[dict[str, Any]] = mapped_column(
        JsonDocument, nullable=False, default=dict
    )
    embedding: Mapped[str | None] = mapped_column(String(300))
    context_window_limit: Mapped[int | None] = mapped_column(Integer)
    tool_rules: Mapped[list[dict[str, Any]]] = mapped_column(
        JsonDocument, nullable=False, default=list
    )
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JsonDocument, nullable=False, default=dict
    )
    message_buffer_autoclear: Mapped[bool] = mapped_column(nullable=False, default=False)
    # The agent's in-context buffer is its messages from this sequence number on
    # (the system message is compiled for each turn, not stored).
    context_start_sequence: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    # Bumped on every update; exposed as the etag for optimistic concurrency.
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (Index(None, "organization_id", "name"),)


class AgentTag(OrganizationScoped, Base):
    __tablename__ = "agent_tags"

    agent_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(200), primary_key=True)

    __table_args__ = (Index(None, "organization_id", "tag"),)


class AgentBlock(OrganizationScoped, Base):
    """A memory block attached to an agent; one block per label per agent."""

    __tablename__ = "agent_blocks"

    agent_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    block_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("blocks.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    block_label: Mapped[str] = mapped_column(String(200), nullable=False)

    __table_args__ = (UniqueConstraint("agent_id", "block_label"),)


class AgentTool(OrganizationScoped, Base):
    __tablename__ = "agent_tools"

    agent_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    tool_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tools.id", ondelete="CASCADE"), primary_key=True, index=True
    )
