"""Embedding vectors stored natively on both engines.

PostgreSQL uses pgvector's ``vector`` type with no fixed dimension, so that
embeddings of different models (and dimensions) can share one table; an
index is built per dimension in use (a partial expression index) rather than
zero-padding everything to one width.  SQLite stores little-endian float32
bytes, the format the ``sqlite-vec`` extension reads, and computes distances
with its functions.

:func:`cosine_distance` compiles to ``<=>`` on PostgreSQL and to
``vec_distance_cosine`` on SQLite, so one query serves both engines.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Float, LargeBinary
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine, UserDefinedType

Embedding = list[float]


class PgVector(UserDefinedType[Embedding]):
    """pgvector's ``vector`` column; values travel in its text form ``[1,2,3]``."""

    cache_ok = True

    def __init__(self, dimensions: int | None = None) -> None:
        self.dimensions = dimensions

    def get_col_spec(self, **kw: Any) -> str:
        return "VECTOR" if self.dimensions is None else f"VECTOR({self.dimensions})"

    def bind_processor(self, dialect: Dialect) -> Any:
        def process(value: Sequence[float] | None) -> str | None:
            return None if value is None else format_pg_vector(value)

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        def process(value: str | None) -> Embedding | None:
            return None if value is None else parse_pg_vector(value)

        return process


class PgHalfVector(PgVector):
    """pgvector's ``halfvec``: 16-bit floats, which HNSW indexes up to 4,000 dimensions."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "HALFVEC" if self.dimensions is None else f"HALFVEC({self.dimensions})"


# Let reflection (and so `engram db check`) recognise pgvector columns.
ischema_names["vector"] = PgVector


def format_pg_vector(values: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def parse_pg_vector(text: str) -> Embedding:
    body = text.strip()[1:-1]
    return [float(part) for part in body.split(",")] if body else []


def pack_float32(values: Sequence[float]) -> bytes:
    """The float32 little-endian encoding sqlite-vec reads."""
    return struct.pack(f"<{len(values)}f", *values)


def unpack_float32(blob: bytes) -> Embedding:
    return list(struct.unpack(f"<{len(blob) // 4}f", blob))


class EmbeddingVector(TypeDecorator[Embedding]):
    """An embedding column: ``vector`` on PostgreSQL, float32 BLOB on SQLite."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(PgVector())
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: Sequence[float] | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "postgresql":
            return list(value)
        return pack_float32(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Embedding | None:
        if value is None:
            return None
        if isinstance(value, bytes | bytearray | memoryview):
            return unpack_float32(bytes(value))
        return list(value)


class cosine_distance(FunctionElement[float]):
    """Cosine distance (0 = same direction, 2 = opposite) between a column and a vector."""

    type = Float()
    inherit_cache = True


@compiles(cosine_distance, "postgresql")
def _cosine_distance_pg(element: cosine_distance, compiler: SQLCompiler, **kw: Any) -> str:
    column, query = list(element.clauses)
    return f"({compiler.process(column, **kw)} <=> {compiler.process(query, **kw)})"


@compiles(cosine_distance, "sqlite")
def _cosine_distance_sqlite(element: cosine_distance, compiler: SQLCompiler, **kw: Any) -> str:
    column, query = list(element.clauses)
    return f"vec_distance_cosine({compiler.process(column, **kw)}, {compiler.process(query, **kw)})"


def distance_to(column: ColumnElement[Any], query: Sequence[float]) -> cosine_distance:
    """``cosine_distance(column, query)`` with the query bound as an embedding."""
    from sqlalchemy import literal

    return cosine_distance(column, literal(list(query), EmbeddingVector()))
