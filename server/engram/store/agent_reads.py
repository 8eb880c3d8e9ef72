"""Reading agents as plain records, and GetAgent's read straight on the driver.

GetAgent is the hottest read of the API, and through the ORM a session, a
``Connection``, the statement cache, the organization hook, the result
machinery and the identity map cost several times what the database does
(``scripts/bench-unary`` profiles it).  :class:`AgentReader` runs the very same
statement, compiled once per dialect, directly on a driver connection kept out
of the pool for such reads (:mod:`engram.store.pinned`):
asyncpg's prepared statement on PostgreSQL, one trip to the connection's
thread on SQLite (in autocommit: one statement is its own snapshot).

Organization scoping stays what the ORM hook would make it: the statement is
built with :func:`~engram.store.scoping.prescoped`, so its compiled text
carries ``organization_id = :scope`` on the agent and on every linked table,
exactly as a scoped session would run it; the reader only binds the values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, select
from sqlalchemy.engine import Dialect

from engram.store.models import Agent
from engram.store.pinned import PinnedConnections
from engram.store.scoping import SCOPE_PARAMETER, prescoped
from engram.store.sqlite import run_on_thread

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
        column.type._cached_result_processor(dialect, None)  # the type's own conversion
        for column in statement.selected_columns
    )
    return _Compiled(str(compiled), positions, processors)


class AgentReader:
    """Runs one agent read by id below the ORM, on one of ``connections``.

    ``statement`` must come from :func:`agent_by_id`: it selects
    :data:`AGENT_COLUMNS` followed by any extra columns, binds ``:agent_id``
    and is :func:`prescoped`; the reader refuses anything else rather than
    read unscoped.
    """

    def __init__(self, statement: Select[Any], connections: PinnedConnections) -> None:
        if not statement.get_execution_options().get("engram_prescoped"):
            raise ValueError("the agent read must carry the organization criteria (prescoped)")
        self._connections = connections
        self._compiled = _compile(statement, connections.dialect)
        missing = {"agent_id", SCOPE_PARAMETER} - set(self._compiled.positions)
        if missing:
            raise ValueError(f"the agent read does not bind {', '.join(sorted(missing))}")
        self._postgres = connections.dialect.name == "postgresql"

    async def fetch(self, organization_id: str, agent_id: str) -> tuple[Any, ...] | None:
        """The processed row of ``agent_id`` in ``organization_id``, or None.

        Raises whatever the driver raised; the connection is then discarded
        (callers retry through a session, whose checkout reconnects).
        """
        values = {"agent_id": agent_id, SCOPE_PARAMETER: organization_id}
        compiled = self._compiled
        parameters = [values[name] for name in compiled.positions]
        async with self._connections.connection() as connection:
            if self._postgres:
                driver: Any = connection.driver_connection  # asyncpg.Connection
                raw = await driver.fetchrow(compiled.sql, *parameters)
            else:
                rows = await run_on_thread(connection.dbapi_connection, compiled.sql, parameters)
                raw = rows[0] if rows else None
        if raw is None:
            return None
        return tuple(
            value if process is None else process(value)
            for value, process in zip(raw, compiled.processors, strict=True)
        )


def agent_by_id(extra: Sequence[ColumnElement[Any]]) -> Select[Any]:
    """The scoped statement reading one agent (``:agent_id``) with ``extra`` columns."""
    return prescoped(select(*agent_columns(), *extra).where(Agent.id == bindparam("agent_id")))
