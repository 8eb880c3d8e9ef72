"""Which files of its attached sources an agent has open, and what part it sees.

One row per (agent, file) the agent has ever opened; closing keeps the row
(with ``is_open`` false) so that reopening can remember nothing more than
the last window, and so that "least recently opened" is a column to sort by.
Deleting the agent or the file deletes the row (cascades); detaching a source
closes its files (see :mod:`engram.services.sources`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from engram.store.models.base import Base, OrganizationScoped
from engram.store.types import UtcDateTime, utc_now


class FileView(OrganizationScoped, Base):
    """An agent's view of one file: open or closed, and the lines in view."""

    __tablename__ = "file_views"

    agent_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    file_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    is_open: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    # The first line in view (1-based) and how many lines the window holds.
    start_line: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    line_count: Mapped[int] = mapped_column(Integer, nullable=False)
    # When the file was last opened: the oldest open file is closed first.
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, default=utc_now)

    __table_args__ = (Index("ix_file_views_agent_id_is_open", "agent_id", "is_open"),)
