"""Reading, writing and re-encrypting the encrypted columns.

A column is encrypted when its ``info`` says so (see
:mod:`engram.store.models.secrets`).  Each value is bound to its table,
column and row id, so a ciphertext copied to another row does not decrypt.

Re-encryption serves two purposes with one routine: the data migration that
encrypts plaintext left over in encrypted columns, and ``engram secrets
rotate``, which rewrites every value not under the current key.  Old keys
keep working for reading (``ENGRAM_ENCRYPTION_KEYS_PREVIOUS``) until the
rotation has run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Column, ColumnClause, MetaData, Table, TableClause, select, update
from sqlalchemy.engine import Connection

from engram.secrets import KeyRing, SecretContext, SecretsError
from engram.store.database import Database
from engram.store.models import Base

BATCH_SIZE = 500


def encrypted_columns(metadata: MetaData = Base.metadata) -> Iterator[tuple[Table, Column[str]]]:
    """Every (table, column) marked as encrypted, in a stable order."""
    for table in metadata.sorted_tables:
        for column in table.columns:
            if column.info.get("encrypted"):
                yield table, column


def context_for(table_name: str, column_name: str, row_id: str) -> SecretContext:
    return SecretContext(table=table_name, column=column_name, row_id=row_id)


def write_secret(keyring: KeyRing, row: Base, attribute: str, plaintext: str | None) -> None:
    """Encrypt ``plaintext`` into ``row.<attribute>`` (an encrypted column); None clears it.

    The row must already have its id, which the ciphertext is bound to.
    """
    column = row.__table__.columns[attribute]
    if not column.info.get("encrypted"):
        raise ValueError(f"{row.__tablename__}.{attribute} is not an encrypted column")
    if plaintext is None:
        setattr(row, attribute, None)
        return
    row_id = _row_id(row)
    setattr(
        row,
        attribute,
        keyring.encrypt(plaintext, context_for(row.__tablename__, column.name, row_id)),
    )


def read_secret(keyring: KeyRing, row: Base, attribute: str) -> str | None:
    """The plaintext of ``row.<attribute>``; legacy plaintext values are returned as they are."""
    stored = getattr(row, attribute)
    if stored is None:
        return None
    column = row.__table__.columns[attribute]
    return keyring.decrypt(stored, context_for(row.__tablename__, column.name, _row_id(row)))


def _row_id(row: Base) -> str:
    row_id = getattr(row, "id", None)
    if not row_id:
        raise ValueError(f"a {row.__tablename__} row needs its id before a secret is written")
    return str(row_id)


@dataclass
class ColumnReport:
    rewritten: int = 0
    current: int = 0
    failed: list[str] = field(default_factory=list)


@dataclass
class RewriteReport:
    """What a re-encryption pass did, per ``table.column``."""

    columns: dict[str, ColumnReport] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [row for report in self.columns.values() for row in report.failed]

    @property
    def rewritten(self) -> int:
        return sum(report.rewritten for report in self.columns.values())

    def lines(self) -> list[str]:
        lines = [
            f"{name}: {report.rewritten} re-encrypted, {report.current} already current, "
            f"{len(report.failed)} unreadable"
            for name, report in self.columns.items()
        ]
        for row in self.failed:
            lines.append(f"unreadable (left as is): {row}")
        return lines


def rewrite_batch(
    connection: Connection,
    keyring: KeyRing,
    table: TableClause,
    column: ColumnClause[str],
    after_id: str | None,
    report: ColumnReport,
) -> str | None:
    """Re-encrypt one batch of ``table.column`` after ``after_id``.

    Returns the last id of the batch, or None when the column is done.

    Synchronous on purpose: the same routine runs inside Alembic migrations.
    """
    id_column = table.c.id
    query = (
        select(id_column, column).where(column.is_not(None)).order_by(id_column).limit(BATCH_SIZE)
    )
    if after_id is not None:
        query = query.where(id_column > after_id)
    rows = connection.execute(query).all()
    for row_id, stored in rows:
        if not keyring.needs_rewrite(stored):
            report.current += 1
            continue
        context = context_for(table.name, column.name, row_id)
        try:
            plaintext = keyring.decrypt(stored, context)
        except SecretsError as error:
            report.failed.append(f"{table.name}.{column.name} id={row_id}: {error.reason}")
            continue
        connection.execute(
            update(table)
            .where(id_column == row_id)
            .values({column.name: keyring.encrypt(plaintext, context)})
        )
        report.rewritten += 1
    return str(rows[-1][0]) if len(rows) == BATCH_SIZE else None


def rewrite_all_sync(
    connection: Connection,
    keyring: KeyRing,
    columns: Iterable[tuple[TableClause, ColumnClause[str]]],
) -> RewriteReport:
    """Re-encrypt ``columns`` within the caller's transaction.

    Migrations pass the columns as they exist at their revision, not as the
    current models declare them, so that an old migration keeps working after
    later ones add encrypted columns.
    """
    report = RewriteReport()
    for table, column in columns:
        column_report = report.columns.setdefault(f"{table.name}.{column.name}", ColumnReport())
        after: str | None = None
        while True:
            after = rewrite_batch(connection, keyring, table, column, after, column_report)
            if after is None:
                break
    return report


async def rotate_secrets(database: Database, keyring: KeyRing) -> RewriteReport:
    """Re-encrypt every stored secret under the current key, one committed batch at a time."""
    keyring.require_current_key()
    report = RewriteReport()
    for table, column in encrypted_columns():
        column_report = report.columns.setdefault(f"{table.name}.{column.name}", ColumnReport())
        after: str | None = None
        while True:
            async with database.transaction(None, all_organizations=True) as session:
                connection = await session.connection()
                after = await connection.run_sync(
                    rewrite_batch, keyring, table, column, after, column_report
                )
            if after is None:
                break
    return report
