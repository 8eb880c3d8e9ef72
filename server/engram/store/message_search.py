"""Ranked full-text search over an agent's messages, on either engine.

The index itself is built by migration ``0005_message_search``: a generated
``tsvector`` column with a GIN index on PostgreSQL, an FTS5 table kept in
step by triggers on SQLite.  Neither is part of the ORM models, since each
exists on one engine only; this module is the one place that knows how to
query them, and :func:`is_search_index_object` tells the drift check to
leave them alone.

User text never reaches either engine's query syntax: the query is cut into
words here and each word is quoted, so ``"``, ``AND``, ``*``, ``-`` or
parentheses are searched for as ordinary text (or dropped, for punctuation)
instead of failing as a syntax error.  Words are alternatives: a message
matching any of them is found, and one matching more of them, or matching
them more often, ranks higher.  SQLite ranks with BM25 (rarer words weigh
more, long messages less); PostgreSQL ranks with cover density
(``ts_rank_cd``: how many matches, how close together), which has no notion
of rarity and, unnormalised, none of length: dividing by the length let a
three-word message matching one word beat a sentence matching two.  PostgreSQL also drops
English stop words ("the", "is"), which SQLite's FTS5 keeps.

Scores are only comparable within one search; higher is better.  Ties (and
every result of a search without words) go newest first.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Select, and_, cast, column, func, literal, literal_column, or_, select
from sqlalchemy import table as table_clause
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Join

from engram.store.models import Message

# The schema objects of migration 0005, by engine.
SQLITE_SEARCH_TABLE = "message_search"
PG_SEARCH_COLUMN = "search_vector"
PG_SEARCH_INDEX = "ix_messages_search_vector"

# Words beyond this many are ignored: a pasted paragraph is still a search,
# not a query with hundreds of alternatives.
MAX_SEARCH_WORDS = 32
# Messages the search never returns: the loop's own notices to the model
# (user messages with an author name) and the results of earlier searches.
RUNTIME_AUTHORED_ROLE = "user"
SEARCH_TOOL_NAME = "conversation_search"

_WORD = re.compile(r"\w+")
_FTS5 = table_clause(SQLITE_SEARCH_TABLE, column("rowid"), column("body"))


def is_search_index_object(name: str | None, type_: str) -> bool:
    """Whether a reflected schema object belongs to the search index (not in the models).

    FTS5 keeps its data in shadow tables named after the virtual table
    (``message_search_data``, ``message_search_idx``, ...), hence the prefix.
    """
    if name is None:
        return False
    if type_ == "table":
        return name == SQLITE_SEARCH_TABLE or name.startswith(SQLITE_SEARCH_TABLE + "_")
    if type_ == "column":
        return name == PG_SEARCH_COLUMN
    if type_ == "index":
        return name == PG_SEARCH_INDEX
    return False


def search_words(query: str) -> list[str]:
    """The distinct words of ``query`` in order (letters, digits, underscores), at most 32."""
    words: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(query):
        if word.casefold() not in seen:
            seen.add(word.casefold())
            words.append(word)
    return words[:MAX_SEARCH_WORDS]


@dataclass(frozen=True)
class MessageSearch:
    """What to look for in one agent's messages.

    ``words`` empty means no text condition: every message with text,
    newest first.  ``start_time`` is inclusive and ``end_time`` exclusive.
    """

    agent_id: str
    words: Sequence[str] = ()
    roles: Sequence[str] = ()
    start_time: datetime | None = None
    end_time: datetime | None = None
    exclude_run_id: str | None = None


@dataclass(frozen=True)
class SearchHit:
    """A message found, with its relevance (higher is better; 0 without words)."""

    message: Message
    score: float

    @property
    def position(self) -> tuple[float, int]:
        """Where the hit sits in the result order, for resuming after it."""
        return (self.score, self.message.sequence_id)


async def search_messages(
    session: AsyncSession,
    search: MessageSearch,
    *,
    limit: int,
    after: tuple[float, int] | None = None,
) -> list[SearchHit]:
    """Up to ``limit`` messages matching ``search``, best first, then newest first.

    ``after`` is the :attr:`SearchHit.position` of the last hit of the
    previous page.  The session's organization scope applies as to any
    query on :class:`Message`.
    """
    dialect = session.get_bind().dialect.name
    score = _score(dialect, search.words)
    query: Select[Message, float] = select(Message, score).where(*_filters(search))
    if search.words:
        query = _match(query, dialect, search.words)
    if after is not None:
        last_score, last_sequence = after
        query = query.where(
            or_(
                score < last_score,
                and_(score == last_score, Message.sequence_id < last_sequence),
            )
        )
    query = query.order_by(score.desc(), Message.sequence_id.desc()).limit(limit)
    rows = (await session.execute(query)).all()
    return [SearchHit(message=row[0], score=float(row[1])) for row in rows]


def _filters(search: MessageSearch) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = [
        Message.agent_id == search.agent_id,
        or_(Message.role != RUNTIME_AUTHORED_ROLE, Message.name.is_(None)),
        or_(Message.name.is_(None), Message.name != SEARCH_TOOL_NAME),
    ]
    if not search.words:
        filters.append(Message.text != "")
    if search.roles:
        filters.append(Message.role.in_(list(search.roles)))
    if search.start_time is not None:
        filters.append(Message.created_at >= search.start_time)
    if search.end_time is not None:
        filters.append(Message.created_at < search.end_time)
    if search.exclude_run_id is not None:
        filters.append(or_(Message.run_id.is_(None), Message.run_id != search.exclude_run_id))
    return filters


def _score(dialect: str, words: Sequence[str]) -> ColumnElement[float]:
    """The relevance expression; a constant when there is nothing to rank by."""
    if not words:
        return cast(literal(0.0), Float).label("score")
    ranked: ColumnElement[Any]
    if dialect == "postgresql":
        ranked = func.ts_rank_cd(_pg_vector(), _pg_query(words))
    else:
        # bm25() is lower for better matches; negated so that higher is better everywhere.
        ranked = -func.bm25(literal_column(SQLITE_SEARCH_TABLE))
    return cast(ranked, Float).label("score")


def _match(
    query: Select[Message, float], dialect: str, words: Sequence[str]
) -> Select[Message, float]:
    if dialect == "postgresql":
        return query.where(_pg_vector().op("@@")(_pg_query(words)))
    found = _FullTextFirst(
        _FTS5, Message.__table__, _FTS5.c.rowid == literal_column("messages.rowid")
    )
    return query.select_from(found).where(
        literal_column(SQLITE_SEARCH_TABLE).op("MATCH")(_fts5_query(words))
    )


class _FullTextFirst(Join):
    """A join SQLite must run with the full-text table as the outer loop.

    Left to itself the planner walks the agent's messages by index and runs
    the full-text query once per message: 43 s instead of 20 ms for common
    words over 50,000 messages.  ``CROSS JOIN`` is SQLite's way of fixing
    the order of a join.
    """

    inherit_cache = True


@compiles(_FullTextFirst, "sqlite")
def _render_full_text_first(join: _FullTextFirst, compiler: SQLCompiler, **kw: Any) -> str:
    kw.pop("asfrom", None)
    linter = kw.get("from_linter")
    if linter is not None:  # the ON clause links the two tables: not a cartesian product
        linter.edges.update(itertools.product(join.left._from_objects, join.right._from_objects))
    left = compiler.process(join.left, asfrom=True, **kw)
    right = compiler.process(join.right, asfrom=True, **kw)
    if join.onclause is None:  # never: built with one in _match
        return f"{left} CROSS JOIN {right}"
    on = compiler.process(join.onclause, **kw)
    return f"{left} CROSS JOIN {right} ON {on}"


def _pg_vector() -> ColumnElement[Any]:
    return literal_column(f"messages.{PG_SEARCH_COLUMN}")


def _pg_query(words: Sequence[str]) -> ColumnElement[Any]:
    # Each word is quoted, so to_tsquery sees one term per word (stemmed with
    # the same configuration as the index) joined by OR, never operators.
    text = " | ".join(f"'{word}'" for word in words)
    return func.to_tsquery(literal_column("'english'::regconfig"), text)


def _fts5_query(words: Sequence[str]) -> str:
    # Double-quoted strings are FTS5 literals: keywords such as AND or NEAR and
    # characters such as * lose their meaning.  Words hold no quotes to escape.
    return " OR ".join(f'"{word}"' for word in words)
