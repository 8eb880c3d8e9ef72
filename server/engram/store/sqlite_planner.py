"""Statistics that tell SQLite's query planner how little an organization (or a status) narrows.

Every organization-scoped table has an index on ``organization_id`` (the
cascade from a deleted organization and organization-wide listings use it),
and every scoped statement says ``organization_id = ?`` next to its real key:
``agent_tags.agent_id = ? AND agent_tags.organization_id = ?``.  Without
statistics SQLite guesses that an equality on any index's first column
matches about ten rows, so the two indexes tie, and it often picks the
organization's: GetAgent then read every tag, block and tool link of the
whole organization to keep one agent's (measured: 27 us with 20 agents, and
growing with every agent added).  PostgreSQL gathers statistics by itself
(autovacuum's ANALYZE) and is left alone.

Running ``ANALYZE`` would need data worth measuring and would be stale at
once; instead each index that starts with ``organization_id`` gets a fixed
``sqlite_stat1`` row saying an organization holds a tenth of a large table.
Indexes without a row keep SQLite's default guess, so any other key is
preferred, while a statement with nothing but the organization to go on
still uses its index rather than scanning the table.  ``status`` (a handful
of values) gets the same treatment, or the runs index it leads would win
over the organization's for a listing filtered by status.  The rows are
written by ``engram db upgrade`` and checked at every start (written only if
they differ; a read-only database file is left as it is, with a warning).
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from engram.store.sqlite import WRITE_OPTION

# What the statistics claim: a large table, a share of it per value of an
# unselective leading column, and each further indexed column narrowing
# tenfold (down to one row, and exactly one for a unique index).
TABLE_ROWS = 1_000_000
ROWS_PER_ORGANIZATION = 100_000
UNSELECTIVE_COLUMNS = {"organization_id": ROWS_PER_ORGANIZATION, "status": TABLE_ROWS // 4}

logger = logging.getLogger(__name__)


def organization_index_statistics(connection: Connection) -> dict[tuple[str, str], str]:
    """The ``sqlite_stat1`` row each index led by an unselective column should have."""
    wanted: dict[tuple[str, str], str] = {}
    tables = connection.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).scalars()
    for table in list(tables):
        for index in connection.exec_driver_sql(f'PRAGMA index_list("{table}")').all():
            index_name, unique = index[1], bool(index[2])
            columns = [
                row[2]
                for row in sorted(
                    connection.exec_driver_sql(f'PRAGMA index_info("{index_name}")').all()
                )
            ]
            if columns and columns[0] in UNSELECTIVE_COLUMNS:
                rows = UNSELECTIVE_COLUMNS[columns[0]]
                wanted[(table, index_name)] = _statistic(rows, len(columns), unique)
    return wanted


def _statistic(rows_per_value: int, column_count: int, unique: bool) -> str:
    rows = [TABLE_ROWS, rows_per_value]
    for _ in range(column_count - 1):
        rows.append(max(1, rows[-1] // 10))
    if unique and column_count > 1:
        rows[-1] = 1
    return " ".join(str(count) for count in rows)


def _current_statistics(connection: Connection) -> dict[tuple[str, str], str]:
    exists = connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'"
    ).first()
    if exists is None:
        return {}
    rows = connection.exec_driver_sql(
        "SELECT tbl, idx, stat FROM sqlite_stat1 WHERE idx IS NOT NULL"
    ).all()
    return {(row[0], row[1]): row[2] for row in rows}


def statistics_to_write(connection: Connection) -> dict[tuple[str, str], str]:
    """The rows of :func:`organization_index_statistics` that are missing or differ."""
    wanted = organization_index_statistics(connection)
    current = _current_statistics(connection)
    return {key: stat for key, stat in wanted.items() if current.get(key) != stat}


def write_planner_statistics(connection: Connection) -> bool:
    """Write the rows :func:`statistics_to_write` names; True if there were any."""
    changed = statistics_to_write(connection)
    if not changed:
        return False
    # Creates sqlite_stat1 when missing (the schema table has no index to measure).
    connection.exec_driver_sql("ANALYZE sqlite_master")
    for (table, index), stat in changed.items():
        connection.exec_driver_sql(
            "DELETE FROM sqlite_stat1 WHERE tbl = ? AND idx = ?", (table, index)
        )
        connection.exec_driver_sql(
            "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", (table, index, stat)
        )
    return True


async def ensure_planner_statistics(engine: AsyncEngine) -> bool:
    """On SQLite, bring the statistics up to date; True if they were written.

    SQLite reads the statistics when a connection loads the schema, so after
    a change the pool's open connections are closed and the next ones read
    them.  A no-op on PostgreSQL.
    """
    if engine.dialect.name != "sqlite":
        return False
    # Looked at first in a plain read: most starts have nothing to write and
    # need not queue for the write lock (nor fail on a read-only file).
    async with engine.connect() as connection:
        if not await connection.run_sync(statistics_to_write):
            return False
    try:
        async with engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
            changed = await connection.run_sync(write_planner_statistics)
    except OperationalError as error:
        if "readonly" not in str(error).replace("-", "").replace(" ", ""):
            raise
        logger.warning(
            "the SQLite database is read-only: its query planner statistics stay as they are "
            "(lookups by key may search a whole organization); start once with write access"
        )
        return False
    if changed:
        await engine.dispose()
    return changed
