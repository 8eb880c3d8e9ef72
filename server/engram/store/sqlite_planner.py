"""Statistics that tell SQLite's query planner how little an organization narrows a search.

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
still uses its index rather than scanning the table.  The rows are written
after every migration (new indexes get theirs) and checked at startup.
"""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from engram.store.sqlite import WRITE_OPTION

# What the statistics claim: a large table, a tenth of it per organization,
# and each further indexed column narrowing tenfold (down to one row).
TABLE_ROWS = 1_000_000
ROWS_PER_ORGANIZATION = 100_000


def organization_index_statistics(connection: Connection) -> dict[tuple[str, str], str]:
    """The ``sqlite_stat1`` row each index led by ``organization_id`` should have."""
    wanted: dict[tuple[str, str], str] = {}
    tables = connection.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).scalars()
    for table in list(tables):
        for index in connection.exec_driver_sql(f'PRAGMA index_list("{table}")').all():
            index_name = index[1]
            columns = [
                row[2]
                for row in sorted(
                    connection.exec_driver_sql(f'PRAGMA index_info("{index_name}")').all()
                )
            ]
            if columns and columns[0] == "organization_id":
                wanted[(table, index_name)] = _statistic(len(columns))
    return wanted


def _statistic(column_count: int) -> str:
    rows = [TABLE_ROWS, ROWS_PER_ORGANIZATION]
    for _ in range(column_count - 1):
        rows.append(max(1, rows[-1] // 10))
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


def write_planner_statistics(connection: Connection) -> bool:
    """Write the rows that differ from :func:`organization_index_statistics`; True if any did."""
    wanted = organization_index_statistics(connection)
    current = _current_statistics(connection)
    changed = {key: stat for key, stat in wanted.items() if current.get(key) != stat}
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
    async with engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
        changed = await connection.run_sync(write_planner_statistics)
    if changed:
        await engine.dispose()
    return changed
