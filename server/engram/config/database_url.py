"""PostgreSQL connection strings: building, normalising and redacting them.

Users hand us URIs in whatever form their other tools use: ``postgres://``,
``postgresql://``, ``postgresql+psycopg://`` and so on, with libpq query
parameters such as ``sslmode`` or ``application_name``.  The server talks to
PostgreSQL through SQLAlchemy's asyncpg dialect, which passes the URI's
query parameters straight to ``asyncpg.connect()`` as keyword arguments, so
libpq spellings must be translated (``sslmode`` -> ``ssl``) or moved
(``application_name`` -> ``server_settings``).  A parameter we cannot carry
over is an error naming it; silently dropping, say, an SSL requirement would
be worse.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ASYNC_DRIVERNAME = "postgresql+asyncpg"
LIBPQ_DRIVERNAME = "postgresql"
POSTGRES_SCHEMES = frozenset({"postgres", "postgresql"})
DEFAULT_PORT = 5432

SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_SSL_BOOLEANS = {
    "true": "require",
    "1": "require",
    "on": "require",
    "yes": "require",
    "false": "disable",
    "0": "disable",
    "off": "disable",
    "no": "disable",
}

# libpq parameters that are really server settings; asyncpg takes them in server_settings.
SERVER_SETTING_PARAMS = frozenset({"application_name", "search_path", "timezone", "TimeZone"})
# asyncpg.connect() keywords SQLAlchemy may pass through from the query as they are.
ASYNCPG_PASSTHROUGH = frozenset(
    {
        "host",
        "port",
        "prepared_statement_cache_size",
        "prepared_statement_name_func",
        "command_timeout",
        "statement_cache_size",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
        "target_session_attrs",
        "direct_tls",
    }
)
# asyncpg reads these files from PGSSLROOTCERT / PGSSLCERT / PGSSLKEY / PGSSLCRL, not kwargs.
SSL_FILE_PARAMS = {
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "sslpassword": "PGSSLPASSWORD",
}


class DatabaseUrlError(ValueError):
    """A URI that is not a usable PostgreSQL URI; the message says why."""


@dataclass(frozen=True)
class AsyncpgTarget:
    """What SQLAlchemy's asyncpg dialect needs: a URL and extra ``connect_args``."""

    url: str
    connect_args: dict[str, Any] = field(default_factory=dict)


def is_postgres_url(url: str) -> bool:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False
    return parsed.get_backend_name() in POSTGRES_SCHEMES


def _parse_postgres(url: str) -> URL:
    if not url or not url.strip():
        raise DatabaseUrlError("the database URI is empty")
    try:
        parsed = make_url(url.strip())
    except ArgumentError as error:
        raise DatabaseUrlError(f"cannot parse the database URI {redact_url(url)!r}") from error
    if parsed.get_backend_name() not in POSTGRES_SCHEMES:
        raise DatabaseUrlError(
            f"{redact_url(url)!r} is not a PostgreSQL URI (expected postgres:// or postgresql://)"
        )
    return parsed


def build_postgres_url(
    *, user: str, password: str | None, host: str, port: int | None, database: str
) -> str:
    """A ``postgresql://`` URI from parts, quoting whatever needs quoting.

    A host that is a directory (a Unix socket) goes into the ``host`` query
    parameter, where libpq and asyncpg both look for it.
    """
    credentials = quote(user, safe="")
    if password:
        credentials += ":" + quote(password, safe="")
    target_port = port or DEFAULT_PORT
    if host.startswith("/"):
        return (
            f"{LIBPQ_DRIVERNAME}://{credentials}@/{quote(database, safe='')}"
            f"?host={quote(host, safe='/')}&port={target_port}"
        )
    netloc_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return (
        f"{LIBPQ_DRIVERNAME}://{credentials}@{netloc_host}:{target_port}/{quote(database, safe='')}"
    )


def _ssl_value(raw: str, parameter: str) -> str:
    value = raw.strip()
    lowered = value.lower()
    if lowered in SSL_MODES:
        return lowered
    if lowered in _SSL_BOOLEANS:
        return _SSL_BOOLEANS[lowered]
    raise DatabaseUrlError(
        f"{parameter}={value!r} is not a valid SSL mode; use one of " + ", ".join(sorted(SSL_MODES))
    )


def _options_to_settings(options: str) -> dict[str, str]:
    """``-c name=value`` pairs of libpq's ``options`` parameter."""
    settings: dict[str, str] = {}
    words = shlex.split(options)
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c" and index + 1 < len(words):
            pair = words[index + 1]
            index += 2
        elif (word.startswith("-c") and len(word) > 2) or (word.startswith("--") and "=" in word):
            pair = word[2:]
            index += 1
        else:
            raise DatabaseUrlError(
                f"options={options!r}: only '-c name=value' settings are supported"
            )
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise DatabaseUrlError(f"options={options!r}: {pair!r} is not name=value")
        settings[name.replace("-", "_")] = value
    return settings


def _single(value: str | tuple[str, ...], name: str) -> str:
    if isinstance(value, tuple):
        if len(value) != 1:
            raise DatabaseUrlError(f"the query parameter {name!r} is given more than once")
        return value[0]
    return value


def to_asyncpg(url: str) -> AsyncpgTarget:
    """The URI in the form SQLAlchemy's asyncpg dialect accepts, plus ``connect_args``."""
    parsed = _parse_postgres(url)
    query: dict[str, str] = {}
    server_settings: dict[str, str] = {}
    connect_args: dict[str, Any] = {}
    for name, raw in parsed.query.items():
        value = _single(raw, name)
        if name in ("sslmode", "ssl"):
            query["ssl"] = _ssl_value(value, name)
        elif name in SERVER_SETTING_PARAMS:
            server_settings["TimeZone" if name.lower() == "timezone" else name] = value
        elif name == "options":
            server_settings.update(_options_to_settings(value))
        elif name in ("connect_timeout", "timeout"):
            try:
                connect_args["timeout"] = float(value)
            except ValueError as error:
                raise DatabaseUrlError(f"{name}={value!r} is not a number of seconds") from error
        elif name in ASYNCPG_PASSTHROUGH:
            query[name] = value
        elif name in SSL_FILE_PARAMS:
            raise DatabaseUrlError(
                f"the URI parameter {name!r} cannot be passed to asyncpg; set the environment "
                f"variable {SSL_FILE_PARAMS[name]} to the file instead"
            )
        else:
            raise DatabaseUrlError(
                f"the URI parameter {name!r} is not supported; remove it or set it on the server"
            )
    if server_settings:
        connect_args["server_settings"] = server_settings
    rebuilt = parsed.set(drivername=ASYNC_DRIVERNAME, query=query)
    return AsyncpgTarget(
        url=rebuilt.render_as_string(hide_password=False), connect_args=connect_args
    )


def to_libpq(url: str, connect_args: dict[str, Any] | None = None) -> str:
    """A plain ``postgresql://`` URI that psql, pg_dump and libpq drivers understand.

    The reverse of :func:`to_asyncpg`: ``ssl`` becomes ``sslmode`` and server
    settings become query parameters again.
    """
    parsed = _parse_postgres(url)
    query: dict[str, str] = {}
    for name, raw in parsed.query.items():
        value = _single(raw, name)
        if name in ("ssl", "sslmode"):
            query["sslmode"] = _ssl_value(value, name)
        else:
            query[name] = value
    extra = dict(connect_args or {})
    settings: dict[str, str] = dict(extra.get("server_settings", {}))
    if "application_name" in settings:
        query["application_name"] = settings.pop("application_name")
    if settings:
        query["options"] = " ".join(f"-c {name}={value}" for name, value in settings.items())
    if "timeout" in extra:
        query["connect_timeout"] = str(int(float(extra["timeout"])))
    rebuilt = parsed.set(drivername=LIBPQ_DRIVERNAME, query=query)
    return rebuilt.render_as_string(hide_password=False)


def redact_url(url: str) -> str:
    """The URI with its password replaced by ``***``, for logs and ``engram config``."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparsable URI>"
    return parsed.render_as_string(hide_password=True)
