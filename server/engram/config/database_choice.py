"""Which database engine to use, decided once from the settings.

The order is fixed: a full PostgreSQL URI wins; otherwise the individual
``PG_*`` parameters when every required one is present; otherwise the
embedded SQLite database.  A partial set of ``PG_*`` parameters is a
configuration error rather than a silent fall back to SQLite, because a
deployment that meant PostgreSQL would otherwise lose its data on the next
restart without anyone noticing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from engram.config.database_url import build_postgres_url, is_postgres_url, redact_url
from engram.config.settings import Settings

DEFAULT_PG_PORT = 5432


class DatabaseEngine(enum.StrEnum):
    """The two supported engines."""

    POSTGRESQL = "postgresql"
    SQLITE = "sqlite"


class ConfigurationError(ValueError):
    """The settings cannot be used as they are; the message says what to change."""


@dataclass(frozen=True)
class DatabaseChoice:
    """The engine chosen, where it lives and why it was chosen."""

    engine: DatabaseEngine
    url: str
    reason: str
    sqlite_path: Path | None = None

    @property
    def redacted_url(self) -> str:
        """The URL with any password hidden, safe to print and log."""
        return redact_url(self.url)

    @property
    def is_postgresql(self) -> bool:
        return self.engine is DatabaseEngine.POSTGRESQL

    @property
    def is_sqlite(self) -> bool:
        return self.engine is DatabaseEngine.SQLITE


# The parameters that must all be present to build a URL from parts.
_REQUIRED_PARTS = {"pg_db": "PG_DB", "pg_user": "PG_USER", "pg_host": "PG_HOST"}
_OPTIONAL_PARTS = {"pg_password": "PG_PASSWORD", "pg_port": "PG_PORT"}


def choose_database(settings: Settings) -> DatabaseChoice:
    """Apply the engine-selection rules to ``settings``."""
    if settings.pg_uri is not None:
        uri = settings.pg_uri.get_secret_value()
        if not is_postgres_url(uri):
            raise ConfigurationError(
                "ENGRAM_PG_URI (alias LETTA_PG_URI) must be a postgres:// or postgresql:// URI; "
                f"got {redact_url(uri)!r}. Unset it to use the embedded SQLite database."
            )
        return DatabaseChoice(
            DatabaseEngine.POSTGRESQL, uri, "ENGRAM_PG_URI (or LETTA_PG_URI) is set"
        )

    present = {
        field: getattr(settings, field) is not None
        for field in (*_REQUIRED_PARTS, *_OPTIONAL_PARTS)
    }
    if any(present.values()):
        missing = [
            f"ENGRAM_{name} (alias LETTA_{name})"
            for field, name in _REQUIRED_PARTS.items()
            if not present[field]
        ]
        if missing:
            given = [
                f"ENGRAM_{name}"
                for field, name in {**_REQUIRED_PARTS, **_OPTIONAL_PARTS}.items()
                if present[field]
            ]
            raise ConfigurationError(
                "PostgreSQL is partly configured: "
                + ", ".join(given)
                + " set but "
                + ", ".join(missing)
                + " missing. Set the missing variables, set ENGRAM_PG_URI instead, "
                "or unset every PG_* variable to use the embedded SQLite database."
            )
        password = settings.pg_password.get_secret_value() if settings.pg_password else None
        url = build_postgres_url(
            user=settings.pg_user or "",
            password=password,
            host=settings.pg_host or "",
            port=settings.pg_port or DEFAULT_PG_PORT,
            database=settings.pg_db or "",
        )
        return DatabaseChoice(
            DatabaseEngine.POSTGRESQL,
            url,
            "ENGRAM_PG_DB, ENGRAM_PG_USER and ENGRAM_PG_HOST (or their LETTA_ aliases) are set",
        )

    path = settings.sqlite_path
    return DatabaseChoice(
        DatabaseEngine.SQLITE,
        f"sqlite+aiosqlite:///{path}",
        "no PostgreSQL URI or PG_* parameters are set, so the embedded SQLite database is used",
        sqlite_path=path,
    )
