"""Rows that hold credentials; their ``*_enc`` columns are encrypted at rest.

A column marked ``info={"encrypted": True}`` holds the output of
:class:`engram.secrets.KeyRing` bound to its table, column and row id.  Key
rotation and the plaintext backfill discover these columns from the metadata,
so a new encrypted column needs nothing more than the marker.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from engram.store.ids import IdPrefix
from engram.store.models.base import Base, OrganizationScoped, PrefixedId, Timestamped
from engram.store.types import JsonDocument

ENCRYPTED = {"encrypted": True}


class Provider(PrefixedId, Timestamped, OrganizationScoped, Base):
    """An LLM or embedding provider an organization configured, with its credentials."""

    __tablename__ = "providers"
    id_prefix = IdPrefix.PROVIDER

    name: Mapped[str] = mapped_column(String(200), nullable=False)
    provider_type: Mapped[str] = mapped_column(String(64), nullable=False)
    base_url: Mapped[str | None] = mapped_column(String(1000))
    api_key_enc: Mapped[str | None] = mapped_column(Text, info=ENCRYPTED)
    access_key_enc: Mapped[str | None] = mapped_column(Text, info=ENCRYPTED)
    settings: Mapped[dict[str, Any]] = mapped_column(JsonDocument, nullable=False, default=dict)

    __table_args__ = (UniqueConstraint("organization_id", "name"),)


class AgentEnvironmentVariable(PrefixedId, Timestamped, OrganizationScoped, Base):
    """A secret handed to an agent's tools as an environment variable."""

    __tablename__ = "agent_environment_variables"
    id_prefix = IdPrefix.AGENT_ENV_VAR

    agent_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False
    )
    key: Mapped[str] = mapped_column(String(200), nullable=False)
    value_enc: Mapped[str | None] = mapped_column(Text, info=ENCRYPTED)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")

    __table_args__ = (UniqueConstraint("agent_id", "key"),)
