"""URI session options and the statement timeout reach a real PostgreSQL session."""

from __future__ import annotations

from sqlalchemy import text

from engram.config.settings import Settings
from engram.store.engine import create_postgres_engine
from support.postgres import EmbeddedPostgres


async def test_session_settings_reach_the_server(postgres_server: EmbeddedPostgres) -> None:
    url = postgres_server.url() + "?application_name=engram-test&options=-c%20search_path%3Dpublic"
    engine = create_postgres_engine(url, Settings(pg_statement_timeout_ms=2500))
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SHOW application_name")) == "engram-test"
            assert await connection.scalar(text("SHOW statement_timeout")) == "2500ms"
            assert await connection.scalar(text("SHOW search_path")) == "public"
    finally:
        await engine.dispose()
