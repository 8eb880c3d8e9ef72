"""Full-text search over the agent's conversation, ranked, on both engines.

What is searchable in a message: its ``text`` (what was said; for a tool
message, the result) and the arguments of the tools it called, except those
of ``send_message`` (already in ``text``) and of ``conversation_search``
(an earlier search's words should not find themselves).  Only the first
100,000 characters are indexed: PostgreSQL refuses a tsvector over 1 MB, and
a message that long is an attachment more than a sentence.

* PostgreSQL: a stored generated ``tsvector`` column on ``messages``
  (English stemming) with a GIN index.  Adding the column rewrites the table,
  which indexes the existing messages.
* SQLite: an FTS5 table ``message_search`` whose rowid is the message's rowid
  (Porter stemming over unicode61 tokens), kept in step by triggers on
  insert, update and delete, and filled from the existing messages here.
  It keeps its own copy of the indexed text, so that a delete needs only the
  rowid and never depends on recomputing what was indexed.

Neither object is in the ORM models (the column and the virtual table exist
on one engine only); :mod:`engram.store.migrations` leaves them out of the
drift check.  On SQLite a later migration that recreates ``messages`` (a
batch "move and copy") drops these triggers and renumbers rowids: it must
recreate the triggers and refill the table, as this one does.

Revision ID: 0005_message_search
Revises: 0004_message_buffer
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005_message_search"
down_revision: str | None = "0004_message_buffer"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXED_CHARS = 100_000
# Tools whose arguments are not searchable (see the module docstring).
UNSEARCHED_CALLS = ("send_message", "conversation_search")

PG_SEARCHABLE = (
    "left(\"text\" || ' ' || coalesce(jsonb_path_query_array(tool_calls, "
    "'$[*] ? (" + " && ".join(f'@.name != "{name}"' for name in UNSEARCHED_CALLS) + ").arguments'"
    f")::text, ''), {INDEXED_CHARS})"
)

SQLITE_TRIGGERS = (
    "messages_search_insert",
    "messages_search_update",
    "messages_search_delete",
)


def _sqlite_searchable(row: str) -> str:
    """The indexed text of ``row`` (``new``, ``old`` or ``messages``) as SQLite SQL."""
    unsearched = ", ".join(f"'{name}'" for name in UNSEARCHED_CALLS)
    arguments = (
        "(SELECT group_concat(json_extract(call.value, '$.arguments'), ' ') "
        f"FROM json_each({row}.tool_calls) AS call "
        f"WHERE json_extract(call.value, '$.name') NOT IN ({unsearched}))"
    )
    searchable = f"coalesce({row}.text, '') || ' ' || coalesce({arguments}, '')"
    return f"substr({searchable}, 1, {INDEXED_CHARS})"


NEW_SEARCHABLE = _sqlite_searchable("new")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE messages ADD COLUMN search_vector tsvector "
            f"GENERATED ALWAYS AS (to_tsvector('english'::regconfig, {PG_SEARCHABLE})) STORED"
        )
        op.execute("CREATE INDEX ix_messages_search_vector ON messages USING gin (search_vector)")
        return
    op.execute(
        "CREATE VIRTUAL TABLE message_search USING fts5("
        "body, tokenize = 'porter unicode61 remove_diacritics 2')"
    )
    op.execute(
        "CREATE TRIGGER messages_search_insert AFTER INSERT ON messages BEGIN "
        f"INSERT INTO message_search (rowid, body) VALUES (new.rowid, {NEW_SEARCHABLE}); "
        "END"
    )
    op.execute(
        "CREATE TRIGGER messages_search_update AFTER UPDATE OF text, tool_calls ON messages BEGIN "
        "DELETE FROM message_search WHERE rowid = old.rowid; "
        f"INSERT INTO message_search (rowid, body) VALUES (new.rowid, {NEW_SEARCHABLE}); "
        "END"
    )
    op.execute(
        "CREATE TRIGGER messages_search_delete AFTER DELETE ON messages BEGIN "
        "DELETE FROM message_search WHERE rowid = old.rowid; "
        "END"
    )
    op.execute(
        "INSERT INTO message_search (rowid, body) "
        f"SELECT messages.rowid, {_sqlite_searchable('messages')} FROM messages"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_messages_search_vector")
        op.execute("ALTER TABLE messages DROP COLUMN search_vector")
        return
    for trigger in SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger}")
    op.execute("DROP TABLE message_search")
