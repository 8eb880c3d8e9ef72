"""Reading agents as plain records, and GetAgent's read straight on the driver.

GetAgent is the hottest read of the API, and through the ORM a session, a
``Connection``, the statement cache, the organization hook, the result
machinery and the identity map cost several times what the database does
(``scripts/bench-unary`` profiles it).  :class:`AgentReader` runs the same
columns and criteria, compiled once per dialect, directly on a driver
connection kept out of the pool for such reads (:mod:`engram.store.pinned`):
asyncpg's prepared statement on PostgreSQL, one trip to the connection's
thread on SQLite (in autocommit: each statement is its own snapshot), and
coalesces concurrent reads into batches (:mod:`engram.store.read_batches`).

Organization scoping stays what the ORM hook would make it: the statements are
built with :func:`~engram.store.scoping.prescoped`, so their compiled text
carries ``organization_id = :scope`` on the agent and on every linked table,
exactly as a scoped session would run it; the reader only binds the values.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Label, Select, String, Text, any_, bindparam, cast, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.pool import PoolProxiedConnection

from engram.store.models import Agent
from engram.store.pinned import PinnedConnections
from engram.store.read_batches import ReadBatcher
from engram.store.renderings import LastRenderings
from engram.store.scoping import SCOPE_PARAMETER, prescoped
from engram.store.sqlite import run_each_on_thread

# The agent's own columns a reader needs, in the order of AgentRecord's fields.
AGENT_COLUMNS: tuple[ColumnElement[Any], ...] = (
    Agent.__table__.c.id,
    Agent.__table__.c.name,
    Agent.__table__.c.description,
    Agent.__table__.c.system,
    Agent.__table__.c.agent_type,
    Agent.__table__.c.model,
    Agent.__table__.c.model_settings,
    Agent.__table__.c.embedding,
    Agent.__table__.c.context_window_limit,
    Agent.__table__.c.tool_rules,
    Agent.__table__.c.metadata,
    Agent.__table__.c.message_buffer_autoclear,
    Agent.__table__.c.created_at,
    Agent.__table__.c.updated_at,
    Agent.__table__.c.version,
)


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An agent's stored fields, detached from any session (names as on the model)."""

    id: str
    name: str
    description: str
    system: str
    agent_type: str
    model: str | None
    model_settings: dict[str, Any]
    embedding: str | None
    context_window_limit: int | None
    tool_rules: list[dict[str, Any]]
    metadata_: dict[str, Any]
    message_buffer_autoclear: bool
    created_at: datetime
    updated_at: datetime
    version: int


# The JSON documents among AGENT_COLUMNS.  PostgreSQL's batched read selects
# them as text and the reader decodes them itself, as it does SQLite's: the
# driver would otherwise decode every document of every row it returns, and
# comparing the text tells an unchanged row exactly (``{"a": 1}`` and
# ``{"a": true}`` decode to equal dicts).
DOCUMENTS_AS_TEXT = frozenset(("model_settings", "tool_rules", "metadata_"))


def record_of(values: Sequence[Any]) -> AgentRecord:
    """The record of the first ``len(AGENT_COLUMNS)`` values of a row, already typed."""
    return AgentRecord(*values[: len(AGENT_COLUMNS)])


def agent_columns() -> tuple[Any, ...]:
    """The ORM attributes of :data:`AGENT_COLUMNS`, for ORM-enabled selects (scoped)."""
    return tuple(getattr(Agent, _attribute(column)) for column in AGENT_COLUMNS)


def _attribute(column: ColumnElement[Any]) -> str:
    return "metadata_" if column.key == "metadata" else str(column.key)


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    # Bind parameter names in the order the driver takes the values.
    positions: tuple[str, ...]
    # One result processor per column (None: the driver's value is final).
    processors: tuple[Callable[[Any], Any] | None, ...]


def _compile(statement: Select[Any], dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    positions = tuple(compiled.positiontup or ())
    processors = tuple(
        json.loads
        if isinstance(column, Label) and column.name in DOCUMENTS_AS_TEXT
        else column.type._cached_result_processor(dialect, None)  # the type's own conversion
        for column in statement.selected_columns
    )
    return _Compiled(str(compiled), positions, processors)


# One agent's processed row: AGENT_COLUMNS, then the reader's extra columns.
_Row = tuple[Any, ...]


class AgentReader:
    """Reads agents by id below the ORM, on ``connections``, in batches under load.

    Each row holds :data:`AGENT_COLUMNS` followed by ``extra`` columns, as the
    session read of :func:`agent_by_id` with the same ``extra`` returns it.
    Concurrent reads of one organization are coalesced by a
    :class:`~engram.store.read_batches.ReadBatcher` of its own, so that
    organizations never wait for each other's batches; each batch is one trip
    to the database (on PostgreSQL one statement, ``id = ANY(:agent_ids)``; on
    SQLite the one-agent statement once per agent, all on one trip to the
    connection's thread).  The statements are :func:`prescoped`: their text
    carries ``organization_id = :scope`` on the agent and on every linked
    table, exactly as a scoped session would run them.  An agent whose stored
    values are what they were at its last read comes back as the very same
    row object, so that callers can reuse what they made of it
    (:mod:`engram.store.renderings`).
    """

    def __init__(self, extra: Sequence[ColumnElement[Any]], connections: PinnedConnections) -> None:
        self._connections = connections
        self._postgres = connections.dialect.name == "postgresql"
        statement = agents_by_ids(extra) if self._postgres else agent_by_id(extra)
        self._compiled = _compile(statement, connections.dialect)
        # The batchers of organizations with reads in flight; an idle one is dropped.
        self._batchers: dict[str, ReadBatcher[str, _Row]] = {}
        # The processed row of each agent read lately, by id, reused while the
        # driver's values are equal (see engram.store.renderings).
        self._processed_rows: LastRenderings[str, tuple[Any, ...], _Row] = LastRenderings(
            self._processed, same=operator.eq
        )

    async def fetch(self, organization_id: str, agent_id: str) -> tuple[Any, ...] | None:
        """The processed row of ``agent_id`` in ``organization_id``, or None.

        Raises whatever the driver raised (or :class:`TimeoutError` for a
        read stuck past the batcher's limit); the connection is then
        discarded (callers retry through a session, whose checkout reconnects).
        """
        batcher = self._batchers.get(organization_id)
        if batcher is None:
            batcher = ReadBatcher(
                functools.partial(self._read, organization_id),
                on_idle=functools.partial(self._forget, organization_id),
            )
            self._batchers[organization_id] = batcher
        return await batcher.get(agent_id)

    def _forget(self, organization_id: str) -> None:
        """Drop an idle organization's batcher: the next read makes a new one."""
        self._batchers.pop(organization_id, None)

    async def _read(self, organization_id: str, agent_ids: Sequence[str]) -> dict[str, _Row]:
        async with self._connections.connection() as connection:
            rows = await self._rows(connection, organization_id, list(agent_ids))
        processed = self._processed_rows.get
        return {raw[0]: processed(raw[0], tuple(raw)) for raw in rows}

    async def _rows(
        self, connection: PoolProxiedConnection, organization_id: str, agent_ids: list[str]
    ) -> Sequence[Sequence[Any]]:
        compiled = self._compiled
        names = compiled.positions
        if self._postgres:
            values = {"agent_ids": agent_ids, SCOPE_PARAMETER: organization_id}
            driver: Any = connection.driver_connection  # asyncpg.Connection
            return list(await driver.fetch(compiled.sql, *(values[name] for name in names)))
        parameters = [
            [{"agent_id": agent_id, SCOPE_PARAMETER: organization_id}[name] for name in names]
            for agent_id in agent_ids
        ]
        results = await run_each_on_thread(connection.dbapi_connection, compiled.sql, parameters)
        return [row for rows in results for row in rows]

    def _processed(self, raw: Sequence[Any]) -> _Row:
        return tuple(
            value if process is None else process(value)
            for value, process in zip(raw, self._compiled.processors, strict=True)
        )


def agent_by_id(extra: Sequence[ColumnElement[Any]]) -> Select[Any]:
    """The scoped statement reading one agent (``:agent_id``) with ``extra`` columns."""
    return prescoped(select(*agent_columns(), *extra).where(Agent.id == bindparam("agent_id")))


def agents_by_ids(extra: Sequence[ColumnElement[Any]]) -> Select[Any]:
    """The scoped statement reading the agents among ``:agent_ids`` (PostgreSQL's ``ANY``).

    Its JSON documents come back as their text, which the reader decodes
    (:data:`DOCUMENTS_AS_TEXT`).
    """
    wanted = any_(bindparam("agent_ids", type_=postgresql.ARRAY(String)))
    columns = [
        cast(column, Text).label(column.key) if column.key in DOCUMENTS_AS_TEXT else column
        for column in agent_columns()
    ]
    return prescoped(select(*columns, *extra).where(Agent.id == wanted))
