"""Data sources: folders of uploaded files whose text agents can search.

A source owns one archive (``archives.kind = "source"``) where the passages
cut from its files live, so searching a source is searching an archive.
Each file keeps its extracted text, and each of its passages records where in
that text it starts and ends (``metadata.start``/``end``), so that tools
reading files by line or by window can come without a new schema.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from engram.store.ids import IdPrefix
from engram.store.models.base import Base, OrganizationScoped, PrefixedId, Timestamped
from engram.store.types import UtcDateTime, utc_now

SOURCE_ARCHIVE_KIND = "source"


class FileStatus(enum.StrEnum):
    """Where a file is in its ingestion; the last two are terminal."""

    QUEUED = "queued"
    PARSING = "parsing"
    EMBEDDING = "embedding"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (FileStatus.COMPLETED, FileStatus.FAILED)


class Source(PrefixedId, Timestamped, OrganizationScoped, Base):
    __tablename__ = "sources"
    id_prefix = IdPrefix.SOURCE

    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # The embedding handle (provider/model) every passage of this source uses.
    embedding: Mapped[str] = mapped_column(String(300), nullable=False)
    # RESTRICT: a source's archive goes only with the source.
    archive_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("archives.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    __mapper_args__ = {"version_id_col": version}
    __table_args__ = (UniqueConstraint("organization_id", "name"),)


class SourceFile(PrefixedId, Timestamped, OrganizationScoped, Base):
    """One uploaded file and the state of its ingestion."""

    __tablename__ = "files"
    id_prefix = IdPrefix.FILE

    source_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("sources.id", ondelete="CASCADE"), nullable=False, index=True
    )
    file_name: Mapped[str] = mapped_column(String(500), nullable=False)
    media_type: Mapped[str] = mapped_column(String(100), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=FileStatus.QUEUED)
    # Why the file failed, in words a user can act on; empty unless failed.
    error: Mapped[str] = mapped_column(Text, nullable=False, default="")
    chunks_total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Pages of a PDF (0 for other types).
    page_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # The text extracted from the file, which chunk positions refer to.
    text: Mapped[str | None] = mapped_column(Text)
    # How many times an ingestion started; a restart after a crash counts.
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # While set and in the future, one server process is ingesting the file
    # and renews this; an expired lease on an unfinished file means that
    # process died, and any process may take the file over.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    __table_args__ = (UniqueConstraint("source_id", "file_name"),)


class FileContent(OrganizationScoped, Base):
    """The uploaded bytes, kept only until the file's ingestion ends.

    A separate table so that listing files never reads the bytes, and so that
    any server process can (re)ingest a file after a crash.
    """

    __tablename__ = "file_contents"

    file_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class SourceAgent(OrganizationScoped, Base):
    """A source attached to an agent: the agent may read and search its files."""

    __tablename__ = "source_agents"

    source_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True
    )
    agent_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utc_now)
