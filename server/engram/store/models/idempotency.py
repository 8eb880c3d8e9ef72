"""Request ids already served, so that a retried Create returns what the first one made."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, PrimaryKeyConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from engram.store.models.base import Base, OrganizationScoped
from engram.store.types import UtcDateTime, utc_now


class IdempotencyKey(OrganizationScoped, Base):
    __tablename__ = "idempotency_keys"

    # The RPC the request id was used with (a request id is unique per method).
    method: Mapped[str] = mapped_column(String(100), nullable=False)
    request_id: Mapped[str] = mapped_column(String(64), nullable=False)
    resource_id: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now, nullable=False)

    __table_args__ = (
        PrimaryKeyConstraint("organization_id", "method", "request_id"),
        Index(None, "created_at"),
    )
