"""Collecting related rows into one JSON array inside a query, on either engine.

Reading an agent with its tags, blocks and tools took one query per
collection.  Each query costs a round trip (a thread hop on SQLite) plus
SQLAlchemy's statement handling, which dominate a small read; folding the
collections into correlated subqueries that return ordered JSON arrays makes
the whole read one statement (``scripts/bench-unary`` measures the effect).
The engines spell the aggregate differently, so it is chosen by dialect name.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import JSON, ColumnElement, String, func, literal_column, type_coerce
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import QueryableAttribute

Column = ColumnElement[Any] | QueryableAttribute[Any]


def json_list(dialect: str, value: Column, *order_by: Column) -> Any:
    """An aggregate of ``value`` ordered by ``order_by``, as one JSON array ([] for no rows).

    The ordering happens inside the aggregate, in the database's own collation,
    so the list agrees with a paginated query ordered by the same column.
    """
    if dialect == "postgresql":
        return func.coalesce(
            func.json_agg(value).aggregate_order_by(*order_by), literal_column("'[]'::json")
        )
    return func.json_group_array(value).aggregate_order_by(*order_by)


def string_list(dialect: str, value: Column, *order_by: Column) -> Any:
    """Like :func:`json_list` for strings, but a native ``text[]`` on PostgreSQL.

    asyncpg decodes an array in C, where a JSON column goes through a Python
    codec and ``json.loads`` per value: on GetAgent's three link lists that
    was a measurable share of a read.  SQLite has no arrays and keeps JSON.
    Read the result back with :func:`as_string_list`.
    """
    if dialect == "postgresql":
        return func.coalesce(
            func.array_agg(value).aggregate_order_by(*order_by), literal_column("'{}'")
        )
    return json_list(dialect, value, *order_by)


def as_string_list(dialect: str, expression: Any) -> ColumnElement[Any]:
    """Read a :func:`string_list` expression back as a list of strings."""
    if dialect == "postgresql":
        return type_coerce(expression, postgresql.ARRAY(String))
    return as_json(expression)


def as_json(expression: Any) -> ColumnElement[Any]:
    """Read ``expression`` back as JSON."""
    return type_coerce(expression, JSON)


def decode_list(value: Any) -> list[Any]:
    """The items of a :func:`json_list` column, whichever way the driver returned it."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    return list(value)
