"""Archival memory: archives of passages searched by meaning."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, true
from sqlalchemy.orm import Mapped, mapped_column

from engram.store.ids import IdPrefix
from engram.store.models.base import Base, OrganizationScoped, PrefixedId, Timestamped
from engram.store.types import JsonDocument
from engram.store.vectors import Embedding, EmbeddingVector


class Archive(PrefixedId, Timestamped, OrganizationScoped, Base):
    __tablename__ = "archives"
    id_prefix = IdPrefix.ARCHIVE

    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    embedding: Mapped[str | None] = mapped_column(String(300))
    # Who owns the archive: "agent" archives are listed and attached as such;
    # a "source" archive holds one data source's passages and belongs to it
    # (see engram.store.models.sources), so archive listings leave it out.
    kind: Mapped[str] = mapped_column(
        String(16), nullable=False, default="agent", server_default="agent"
    )
    # Bumped on every update; exposed as the etag for optimistic concurrency.
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1, server_default="1")

    __mapper_args__ = {"version_id_col": version}


class ArchiveAgent(OrganizationScoped, Base):
    """An archive an agent can search; each agent has one default archive."""

    __tablename__ = "archive_agents"

    archive_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True
    )
    agent_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    is_default: Mapped[bool] = mapped_column(nullable=False, default=False)

    # At most one default archive per agent, even when two first inserts race.
    __table_args__ = (
        Index(
            "uq_archive_agents_default",
            "agent_id",
            unique=True,
            sqlite_where=is_default == true(),
            postgresql_where=is_default == true(),
        ),
    )


class Passage(PrefixedId, Timestamped, OrganizationScoped, Base):
    """A piece of text and its embedding.

    The dimension and the model are stored with each row so that several
    embedding models can coexist; vectors are never padded.
    """

    __tablename__ = "passages"
    id_prefix = IdPrefix.PASSAGE

    archive_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("archives.id", ondelete="CASCADE"), nullable=False, index=True
    )
    text: Mapped[str] = mapped_column(Text, nullable=False)
    embedding: Mapped[Embedding | None] = mapped_column(EmbeddingVector())
    embedding_dim: Mapped[int | None] = mapped_column(Integer)
    embedding_model: Mapped[str | None] = mapped_column(String(300))
    # The file of a data source this passage was cut from (None for archival
    # memory); deleting the file or its source deletes its passages.
    file_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("files.id", ondelete="CASCADE"), index=True
    )
    tags: Mapped[list[str]] = mapped_column(JsonDocument, nullable=False, default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JsonDocument, nullable=False, default=dict
    )

    __table_args__ = (Index(None, "organization_id", "created_at"),)
