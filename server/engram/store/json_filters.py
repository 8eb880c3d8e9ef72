"""Conditions on JSON list columns (tags), spelled for each engine.

Tags are stored as a JSON list in the row.  Filtering them in SQL, not after
the query, keeps pages full and page tokens meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, exists, func, literal, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB, array


def json_list_has_any(dialect: str, column: Any, values: Sequence[str]) -> ColumnElement[bool]:
    """True where the JSON list in ``column`` holds at least one of ``values``."""
    if dialect == "postgresql":
        # JSONB's ?| operator, which a GIN index on the column can serve.
        condition: ColumnElement[bool] = type_coerce(column, JSONB).has_any(array(list(values)))
        return condition
    items = func.json_each(column).table_valued("value")
    return exists(select(literal(1)).select_from(items).where(items.c.value.in_(list(values))))


def json_list_has_all(dialect: str, column: Any, values: Sequence[str]) -> ColumnElement[bool]:
    """True where the JSON list in ``column`` holds every one of ``values``."""
    wanted = sorted(set(values))
    if dialect == "postgresql":
        # JSONB containment (@>), which a GIN index on the column can serve.
        condition: ColumnElement[bool] = type_coerce(column, JSONB).contains(wanted)
        return condition
    items = func.json_each(column).table_valued("value")
    matched = (
        select(func.count(func.distinct(items.c.value)))
        .select_from(items)
        .where(items.c.value.in_(wanted))
        .scalar_subquery()
    )
    return matched == len(wanted)
