"""The declarative base every table derives from, and the mixins they share."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from sqlalchemy import ForeignKey, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

from engram.store.ids import IdPrefix, new_id
from engram.store.types import UtcDateTime, utc_now

# Deterministic constraint names: both engines then report the same name in
# errors, and migrations can address constraints by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base class of all ORM models."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Timestamped:
    """``created_at`` and ``updated_at``, both timezone-aware UTC."""

    created_at: Mapped[datetime] = mapped_column(
        UtcDateTime(), default=utc_now, nullable=False, sort_order=100
    )
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime(), default=utc_now, onupdate=utc_now, nullable=False, sort_order=101
    )


class PrefixedId:
    """A string primary key ``<prefix>-<uuid4>``; subclasses name the prefix."""

    id_prefix: ClassVar[IdPrefix]

    @declared_attr
    def id(cls) -> Mapped[str]:
        prefix = cls.id_prefix
        return mapped_column(
            String(64), primary_key=True, default=lambda: new_id(prefix), sort_order=-100
        )


class OrganizationScoped:
    """Rows that belong to one organization.

    Every query a scoped session runs against such a model is filtered by the
    session's organization (see :mod:`engram.store.scoping`), and every row it
    writes must carry that organization.
    """

    @declared_attr
    def organization_id(cls) -> Mapped[str]:
        return mapped_column(
            String(64),
            ForeignKey("organizations.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
            sort_order=-99,
        )
