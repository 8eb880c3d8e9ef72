"""Tools an agent can call: built-in ones and user-defined source code."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from engram.store.ids import IdPrefix
from engram.store.models.base import Base, OrganizationScoped, PrefixedId, Timestamped
from engram.store.types import JsonDocument

DEFAULT_RETURN_CHAR_LIMIT = 50_000


class Tool(PrefixedId, Timestamped, OrganizationScoped, Base):
    __tablename__ = "tools"
    id_prefix = IdPrefix.TOOL

    name: Mapped[str] = mapped_column(String(64), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    tool_type: Mapped[str] = mapped_column(String(64), nullable=False)
    source_type: Mapped[str | None] = mapped_column(String(32))
    source_code: Mapped[str | None] = mapped_column(Text)
    json_schema: Mapped[dict[str, Any]] = mapped_column(JsonDocument, nullable=False, default=dict)
    tags: Mapped[list[str]] = mapped_column(JsonDocument, nullable=False, default=list)
    return_char_limit: Mapped[int] = mapped_column(
        Integer, nullable=False, default=DEFAULT_RETURN_CHAR_LIMIT
    )
    # [{"name": ..., "version": ...}] the sandbox installs before running the tool.
    pip_requirements: Mapped[list[dict[str, str]]] = mapped_column(
        JsonDocument, nullable=False, default=list
    )
    default_requires_approval: Mapped[bool] = mapped_column(nullable=False, default=False)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JsonDocument, nullable=False, default=dict
    )

    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (UniqueConstraint("organization_id", "name"),)
