"""Core memory blocks: labelled, size-limited text an agent edits itself."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from engram.store.ids import IdPrefix
from engram.store.models.base import Base, OrganizationScoped, PrefixedId, Timestamped
from engram.store.types import JsonDocument

DEFAULT_BLOCK_CHAR_LIMIT = 100_000


class Block(PrefixedId, Timestamped, OrganizationScoped, Base):
    __tablename__ = "blocks"
    id_prefix = IdPrefix.BLOCK

    label: Mapped[str] = mapped_column(String(200), nullable=False)
    value: Mapped[str] = mapped_column(Text, nullable=False, default="")
    char_limit: Mapped[int] = mapped_column(
        Integer, nullable=False, default=DEFAULT_BLOCK_CHAR_LIMIT
    )
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    read_only: Mapped[bool] = mapped_column(nullable=False, default=False)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JsonDocument, nullable=False, default=dict
    )
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (Index(None, "organization_id", "label"),)
