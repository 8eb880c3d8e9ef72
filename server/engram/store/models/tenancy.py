"""Organizations, their users and the API keys they authenticate with."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from engram.store.ids import IdPrefix
from engram.store.models.base import Base, OrganizationScoped, PrefixedId, Timestamped
from engram.store.types import UtcDateTime


class Organization(PrefixedId, Timestamped, Base):
    """The unit of tenancy: every other resource belongs to exactly one."""

    __tablename__ = "organizations"
    id_prefix = IdPrefix.ORGANIZATION

    name: Mapped[str] = mapped_column(String(200), nullable=False)


class User(PrefixedId, Timestamped, OrganizationScoped, Base):
    __tablename__ = "users"
    id_prefix = IdPrefix.USER

    name: Mapped[str] = mapped_column(String(200), nullable=False)


class ApiKey(PrefixedId, Timestamped, OrganizationScoped, Base):
    """A bearer credential; only a hash of the secret part is stored."""

    __tablename__ = "api_keys"
    id_prefix = IdPrefix.API_KEY

    user_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    # The first characters of the key, shown in listings so a person can tell keys apart.
    display_prefix: Mapped[str] = mapped_column(String(32), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    is_admin: Mapped[bool] = mapped_column(nullable=False, default=False)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
