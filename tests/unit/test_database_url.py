"""Turning user-supplied PostgreSQL URIs into what asyncpg, libpq and the logs need.

Most tests are tables of (input, expected output).  Two checks go further than string
comparison: the URL given to SQLAlchemy is fed through the real asyncpg dialect and the
resulting keywords through ``asyncpg.connect`` aimed at a closed port, so that a keyword
asyncpg would refuse shows up here rather than at a deployment's first start.
"""

from __future__ import annotations

import dataclasses
import inspect
import socket
import ssl
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url

from engram.config.database_url import (
    AsyncpgTarget,
    DatabaseUrlError,
    build_postgres_url,
    is_postgres_url,
    redact_url,
    to_asyncpg,
    to_libpq,
)

# Read at import time: the suite's autouse fixture removes ENGRAM_* variables per test.

SPECIAL_PASSWORD = "p@ss:w/rd#%"
SPECIAL_ENCODED = "p%40ss%3Aw%2Frd%23%25"
A = "postgresql+asyncpg"

# (case id, input URI, expected SQLAlchemy URL, expected connect_args)
TO_ASYNCPG_CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("postgres scheme", "postgres://u:pw@db:5432/app", f"{A}://u:pw@db:5432/app", {}),
    ("postgresql scheme", "postgresql://u:pw@db/app", f"{A}://u:pw@db/app", {}),
    ("psycopg driver", "postgresql+psycopg://u:pw@db/app", f"{A}://u:pw@db/app", {}),
    ("psycopg2 driver", "postgresql+psycopg2://u:pw@db/app", f"{A}://u:pw@db/app", {}),
    ("pg8000 driver", "postgresql+pg8000://u:pw@db/app", f"{A}://u:pw@db/app", {}),
    (
        "asyncpg already",
        "postgresql+asyncpg://u:pw@db/app?ssl=require",
        f"{A}://u:pw@db/app?ssl=require",
        {},
    ),
    ("sslmode disable", "postgresql://db/app?sslmode=disable", f"{A}://db/app?ssl=disable", {}),
    ("sslmode allow", "postgresql://db/app?sslmode=allow", f"{A}://db/app?ssl=allow", {}),
    ("sslmode prefer", "postgresql://db/app?sslmode=prefer", f"{A}://db/app?ssl=prefer", {}),
    ("sslmode require", "postgresql://db/app?sslmode=require", f"{A}://db/app?ssl=require", {}),
    (
        "sslmode verify-ca",
        "postgresql://db/app?sslmode=verify-ca",
        f"{A}://db/app?ssl=verify-ca",
        {},
    ),
    (
        "sslmode verify-full",
        "postgresql://db/app?sslmode=VERIFY-FULL",
        f"{A}://db/app?ssl=verify-full",
        {},
    ),
    ("ssl true", "postgresql://db/app?ssl=true", f"{A}://db/app?ssl=require", {}),
    ("ssl 0", "postgresql://db/app?ssl=0", f"{A}://db/app?ssl=disable", {}),
    (
        "ssl and equal sslmode",
        "postgresql://db/app?ssl=verify-full&sslmode=verify-full",
        f"{A}://db/app?ssl=verify-full",
        {},
    ),
    (
        "application_name",
        "postgresql://u@db/app?application_name=engram%20worker",
        f"{A}://u@db/app",
        {"server_settings": {"application_name": "engram worker"}},
    ),
    (
        "options with -c pairs",
        "postgresql://u@db/app?options=-c%20search_path%3Dapp,public%20-cstatement_timeout%3D5s"
        "%20--lock-timeout%3D2s%20-c%20x.note%3Da%5C%20b",
        f"{A}://u@db/app",
        {
            "server_settings": {
                "search_path": "app,public",
                "statement_timeout": "5s",
                "lock_timeout": "2s",
                "x.note": "a b",
            }
        },
    ),
    (
        "search_path and timezone",
        "postgresql://u@db/app?search_path=app&TimeZone=UTC&sslmode=require",
        f"{A}://u@db/app?ssl=require",
        {"server_settings": {"search_path": "app", "TimeZone": "UTC"}},
    ),
    (
        "special characters in password",
        f"postgresql://u%40corp:{SPECIAL_ENCODED}@db:5432/my%20db",
        f"{A}://u%40corp:{SPECIAL_ENCODED}@db:5432/my%20db",
        {},
    ),
    ("no password", "postgresql://u@db/app", f"{A}://u@db/app", {}),
    ("empty password", "postgresql://u:@db/app", f"{A}://u:@db/app", {}),
    ("plus stays a plus", "postgresql://u:a+b@db/app", f"{A}://u:a%2Bb@db/app", {}),
    ("IPv6 host", "postgresql://u:pw@[::1]:5433/app", f"{A}://u:pw@[::1]:5433/app", {}),
    (
        "unix socket in query",
        "postgresql://u@/app?host=/var/run/postgresql&port=5433",
        f"{A}://u@/app?host=/var/run/postgresql&port=5433",
        {},
    ),
    (
        "unix socket in authority",
        "postgresql://u@%2Fvar%2Frun%2Fpostgresql:5433/app",
        f"{A}://u@:5433/app?host=/var/run/postgresql",
        {},
    ),
    ("missing port", "postgresql://u@db/app", f"{A}://u@db/app", {}),
    ("nothing but a scheme", "postgresql://", f"{A}:///", {}),
    (
        "connect_timeout",
        "postgresql://u@db/app?connect_timeout=10&sslmode=require",
        f"{A}://u@db/app?ssl=require",
        {"timeout": 10.0},
    ),
    ("asyncpg timeout", "postgresql://u@db/app?timeout=2.5", f"{A}://u@db/app", {"timeout": 2.5}),
    (
        "asyncpg tuning",
        "postgresql://u@db/app?command_timeout=30&prepared_statement_cache_size=0"
        "&statement_cache_size=0&max_cached_statement_lifetime=60",
        f"{A}://u@db/app?command_timeout=30&prepared_statement_cache_size=0",
        {"statement_cache_size": 0, "max_cached_statement_lifetime": 60},
    ),
    (
        "order of kept parameters",
        "postgresql://u@db/app?target_session_attrs=read-write&sslmode=require&krbsrvname=pg"
        "&dbname=other",
        f"{A}://u@db/app?target_session_attrs=read-write&ssl=require&krbsrvname=pg&database=other",
        {},
    ),
    (
        "direct TLS negotiation",
        "postgresql://u@db/app?sslmode=require&sslnegotiation=direct",
        f"{A}://u@db/app?ssl=require",
        {"direct_tls": True},
    ),
]


@pytest.mark.parametrize(
    ("uri", "expected_url", "expected_args"),
    [case[1:] for case in TO_ASYNCPG_CASES],
    ids=[case[0] for case in TO_ASYNCPG_CASES],
)
def test_to_asyncpg(uri: str, expected_url: str, expected_args: dict[str, Any]) -> None:
    target = to_asyncpg(uri)
    assert target == AsyncpgTarget(expected_url, expected_args)
    # The URL must mean the same thing to SQLAlchemy's own parser.
    parsed = make_url(target.url)
    assert parsed.drivername == "postgresql+asyncpg"


def test_special_password_reaches_asyncpg_intact() -> None:
    target = to_asyncpg(f"postgres://u%40corp:{SPECIAL_ENCODED}@db:6543/my%20db?sslmode=require")
    assert _dialect_keywords(target.url) == {
        "host": "db",
        "port": 6543,
        "user": "u@corp",
        "password": SPECIAL_PASSWORD,
        "database": "my db",
        "ssl": "require",
    }


def _dialect_keywords(url: str) -> dict[str, Any]:
    """What SQLAlchemy's asyncpg dialect makes of ``url`` (before ``connect_args``)."""
    dialect_class: Any = PGDialect_asyncpg  # untyped in SQLAlchemy
    dialect = dialect_class()
    _, kwargs = dialect.create_connect_args(make_url(url))
    return dict(kwargs)


def _asyncpg_keywords(target: AsyncpgTarget) -> dict[str, Any]:
    """The keywords SQLAlchemy would end up passing to ``asyncpg.connect``."""
    kwargs = _dialect_keywords(target.url)
    kwargs.update(target.connect_args)
    # SQLAlchemy's adapter keeps these two for itself.
    kwargs.pop("prepared_statement_cache_size", None)
    kwargs.pop("prepared_statement_name_func", None)
    return kwargs


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("uri", "expected_url", "expected_args"),
    [case[1:] for case in TO_ASYNCPG_CASES],
    ids=[case[0] for case in TO_ASYNCPG_CASES],
)
async def test_asyncpg_accepts_the_keywords(
    uri: str,
    expected_url: str,
    expected_args: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """asyncpg validates its arguments before connecting; only the connection may fail."""
    kwargs = _asyncpg_keywords(to_asyncpg(uri))
    inspect.signature(asyncpg.connect).bind(**kwargs)
    if str(kwargs.get("host", "")).startswith("/"):
        kwargs["host"] = str(tmp_path)  # a directory without a server socket
    else:
        kwargs.update(host="127.0.0.1", port=_closed_port())
    if kwargs.get("ssl") in ("verify-ca", "verify-full"):
        # The documented way to give asyncpg a root certificate.
        cafile = ssl.get_default_verify_paths().cafile
        if cafile is None:
            pytest.skip("no CA bundle on this machine to stand in for a root certificate")
        monkeypatch.setenv("PGSSLROOTCERT", cafile)
    kwargs["timeout"] = 5.0
    # Refused, or no such socket: either way the arguments themselves were accepted.
    with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
        await asyncpg.connect(**kwargs)


# (case id, input URI, words the error message must contain)
ERROR_CASES = [
    (
        "unknown parameters",
        "postgresql://db/app?frobnicate=1&keepalives=1",
        ["frobnicate", "keepalives"],
    ),
    (
        "sslrootcert",
        "postgresql://db/app?sslmode=verify-full&sslrootcert=/ca.pem",
        ["sslrootcert", "PGSSLROOTCERT"],
    ),
    ("sslcert", "postgresql://db/app?sslcert=/c.pem", ["sslcert", "PGSSLCERT"]),
    ("sslkey", "postgresql://db/app?sslkey=/k.pem", ["sslkey", "PGSSLKEY"]),
    ("sslcrl", "postgresql://db/app?sslcrl=/crl.pem", ["sslcrl", "PGSSLCRL"]),
    ("sslpassword", "postgresql://db/app?sslpassword=x", ["sslpassword", "PGSSLKEY"]),
    ("mysql", "mysql://u:pw@db/app", ["not a PostgreSQL URI"]),
    ("sqlite", "sqlite+aiosqlite:///engram.db", ["not a PostgreSQL URI"]),
    ("empty", "", ["empty"]),
    ("blank", "   ", ["empty"]),
    ("not a URI", "db.example.com:5432", ["not a URI"]),
    ("bad sslmode", "postgresql://db/app?sslmode=always", ["sslmode", "verify-full"]),
    ("ssl and sslmode disagree", "postgresql://db/app?ssl=require&sslmode=disable", ["sslmode"]),
    ("raw @ in password", "postgresql://u:p@ss@db/app", ["percent-encode"]),
    ("raw / in password", "postgresql://u:pa/ss@db/app", ["percent-encode"]),
    ("stray percent", "postgresql://u:100%@db/app", ["%25"]),
    ("unsupported options", "postgresql://db/app?options=-B%20100", ["-B"]),
    (
        "duplicate parameter",
        "postgresql://db/app?sslmode=require&sslmode=disable",
        ["more than once"],
    ),
    ("zero connect_timeout", "postgresql://db/app?connect_timeout=0", ["connect_timeout"]),
    ("bad port", "postgresql://db:99999/app", ["port"]),
    ("unbracketed IPv6", "postgresql://::1/app", ["brackets"]),
    ("several hosts", "postgresql://h1:5432,h2:5432/app", ["?host=h1,h2"]),
    (
        "bad target_session_attrs",
        "postgresql://db/app?target_session_attrs=rw",
        ["target_session_attrs"],
    ),
    (
        "setting twice",
        "postgresql://db/app?search_path=a&options=-c%20search_path%3Db",
        ["search_path"],
    ),
]


@pytest.mark.parametrize(
    ("uri", "fragments"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_to_asyncpg_errors(uri: str, fragments: list[str]) -> None:
    with pytest.raises(DatabaseUrlError) as caught:
        to_asyncpg(uri)
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "uri",
    [
        f"postgresql://u:{SPECIAL_ENCODED}@db/app?bogus=1",
        "postgresql://u:s3cret@db/app?sslmode=nope",
        "mysql://u:s3cret@db/app",
        "postgresql://u:s3cret@db:notaport/app",
    ],
)
def test_errors_never_show_the_password(uri: str) -> None:
    with pytest.raises(DatabaseUrlError) as caught:
        to_asyncpg(uri)
    message = str(caught.value)
    assert "s3cret" not in message
    assert SPECIAL_ENCODED not in message
    assert SPECIAL_PASSWORD not in message


# (case id, URL, connect_args or None, expected libpq URI)
TO_LIBPQ_CASES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("driver stripped", f"{A}://u:pw@db:5432/app", None, "postgresql://u:pw@db:5432/app"),
    ("postgres scheme", "postgres://u@db/app", None, "postgresql://u@db/app"),
    ("ssl true", f"{A}://db/app?ssl=true", None, "postgresql://db/app?sslmode=require"),
    ("ssl false", f"{A}://db/app?ssl=false", None, "postgresql://db/app?sslmode=disable"),
    ("ssl mode", f"{A}://db/app?ssl=verify-ca", None, "postgresql://db/app?sslmode=verify-ca"),
    ("database", f"{A}://db/app?database=x", None, "postgresql://db/app?dbname=x"),
    ("timeout", f"{A}://db/app?timeout=2.5", None, "postgresql://db/app?connect_timeout=3"),
    (
        "asyncpg tuning dropped",
        f"{A}://db/app?command_timeout=5&prepared_statement_cache_size=0&sslmode=require",
        None,
        "postgresql://db/app?sslmode=require",
    ),
    (
        "settings as options",
        "postgresql://db/app?application_name=x&search_path=a&timezone=UTC",
        None,
        "postgresql://db/app?application_name=x&options=-c%20search_path%3Da%20-c%20timezone%3DUTC",
    ),
    (
        "libpq parameters kept",
        "postgresql+psycopg://db/app?sslrootcert=/ca.pem&keepalives=1",
        None,
        "postgresql://db/app?sslrootcert=/ca.pem&keepalives=1",
    ),
    (
        "connect_args restored",
        f"{A}://u@db/app?ssl=require",
        {
            "timeout": 10.0,
            "statement_cache_size": 0,
            "direct_tls": True,
            "server_settings": {"application_name": "engram", "search_path": "a b"},
        },
        "postgresql://u@db/app?sslmode=require&application_name=engram&connect_timeout=10"
        "&sslnegotiation=direct&options=-c%20search_path%3Da%5C%20b",
    ),
    (
        "unix socket",
        f"{A}://u@:5433/app?host=/tmp/pg",
        None,
        "postgresql://u@:5433/app?host=/tmp/pg",
    ),
    ("IPv6", f"{A}://u@[::1]/app", None, "postgresql://u@[::1]/app"),
]


@pytest.mark.parametrize(
    ("url", "connect_args", "expected"),
    [case[1:] for case in TO_LIBPQ_CASES],
    ids=[case[0] for case in TO_LIBPQ_CASES],
)
def test_to_libpq(url: str, connect_args: dict[str, Any] | None, expected: str) -> None:
    assert to_libpq(url, connect_args) == expected


def test_to_libpq_refuses_what_libpq_cannot_say() -> None:
    with pytest.raises(DatabaseUrlError, match="record_class"):
        to_libpq(f"{A}://db/app", {"record_class": object})
    with pytest.raises(DatabaseUrlError, match="PostgreSQL"):
        to_libpq("sqlite:///x.db")


# libpq-form URIs and what a full round trip turns them into (None: unchanged).
ROUND_TRIP_CASES: list[tuple[str, str | None]] = [
    ("postgresql://u:pw@db:5432/app", None),
    ("postgres://u:pw@db/app?sslmode=verify-full", "postgresql://u:pw@db/app?sslmode=verify-full"),
    (f"postgresql://u:{SPECIAL_ENCODED}@[::1]:5433/my%20db?sslmode=require", None),
    ("postgresql://u@/app?host=/var/run/postgresql&port=5433", None),
    ("postgresql://u:@db/app?target_session_attrs=read-only&dbname=other", None),
    ("postgresql://u@db/app?sslmode=prefer&application_name=engram", None),
    (
        "postgresql://u@db/app?options=-c%20search_path%3Da,b%20-c%20TimeZone%3DUTC"
        "&connect_timeout=10&sslmode=require",
        "postgresql://u@db/app?sslmode=require&connect_timeout=10"
        "&options=-c%20search_path%3Da,b%20-c%20TimeZone%3DUTC",
    ),
    ("postgresql+psycopg://u@db/app?ssl=true", "postgresql://u@db/app?sslmode=require"),
]


@pytest.mark.parametrize(("uri", "expected"), ROUND_TRIP_CASES)
def test_round_trip(uri: str, expected: str | None) -> None:
    target = to_asyncpg(uri)
    back = to_libpq(target.url, target.connect_args)
    assert back == (expected or uri)
    # Same meaning: converting the result again gives the very same asyncpg target.
    assert to_asyncpg(back) == target
    if not target.connect_args:
        # Nothing moved out of the URL, so the URL alone carries the whole meaning.
        assert to_libpq(target.url) == back


# (case id, URI, redacted)
REDACT_CASES = [
    (
        "password",
        "postgresql://svc:s3cret@db:5432/app?sslmode=require",
        "postgresql://svc:***@db:5432/app?sslmode=require",
    ),
    ("encoded password", f"postgres://u:{SPECIAL_ENCODED}@db/app", "postgres://u:***@db/app"),
    ("raw @ in password", "postgresql://u:p@ss@db/app", "postgresql://u:***@db/app"),
    ("raw / in password", "postgresql://u:pa/ss@db/app", "postgresql://u:***@db/app"),
    ("raw ? in password", "postgresql://u:pa?ss@db/app", "postgresql://u:***@db/app"),
    ("asyncpg URL", f"{A}://u:pw@[::1]:5433/app", f"{A}://u:***@[::1]:5433/app"),
    ("no password", "postgresql://u@db/app", "postgresql://u@db/app"),
    ("empty password", "postgresql://u:@db/app", "postgresql://u:@db/app"),
    (
        "@ in the query",
        "postgresql://db:5432/app?application_name=a@b",
        "postgresql://db:5432/app?application_name=a@b",
    ),
    (
        "password parameter",
        "postgresql://db/app?user=u&password=s3cret&sslmode=require",
        "postgresql://db/app?user=u&password=***&sslmode=require",
    ),
    ("sqlite", "sqlite:////var/lib/engram/engram.db", "sqlite:////var/lib/engram/engram.db"),
    ("sqlite aiosqlite", "sqlite+aiosqlite:///engram.db", "sqlite+aiosqlite:///engram.db"),
    ("mysql", "mysql+aiomysql://root:hunter2@db/x", "mysql+aiomysql://root:***@db/x"),
    ("empty", "", ""),
    ("not a URI", "just text", "just text"),
]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [case[1:] for case in REDACT_CASES],
    ids=[case[0] for case in REDACT_CASES],
)
def test_redact_url(uri: str, expected: str) -> None:
    assert redact_url(uri) == expected


# (case id, keyword arguments, expected URI)
BUILD_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "plain",
        {"user": "svc", "password": "pw", "host": "db", "port": 6000, "database": "app"},
        "postgresql://svc:pw@db:6000/app",
    ),
    (
        "special characters",
        {
            "user": "a@b c",
            "password": SPECIAL_PASSWORD + " ?",
            "host": "db",
            "port": None,
            "database": "my db",
        },
        f"postgresql://a%40b%20c:{SPECIAL_ENCODED}%20%3F@db:5432/my%20db",
    ),
    (
        "no password",
        {"user": "svc", "password": None, "host": "db", "port": 5432, "database": "app"},
        "postgresql://svc@db:5432/app",
    ),
    (
        "empty password",
        {"user": "svc", "password": "", "host": "db", "port": None, "database": "app"},
        "postgresql://svc@db:5432/app",
    ),
    (
        "IPv6",
        {"user": "svc", "password": "pw", "host": "2001:db8::1", "port": None, "database": "app"},
        "postgresql://svc:pw@[2001:db8::1]:5432/app",
    ),
    (
        "IPv6 already bracketed",
        {"user": "svc", "password": None, "host": "[::1]", "port": 5433, "database": "app"},
        "postgresql://svc@[::1]:5433/app",
    ),
    (
        "unix socket",
        {
            "user": "svc",
            "password": "pw",
            "host": "/var/run/postgresql",
            "port": None,
            "database": "app",
        },
        "postgresql://svc:pw@/app?host=/var/run/postgresql&port=5432",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [case[1:] for case in BUILD_CASES],
    ids=[case[0] for case in BUILD_CASES],
)
def test_build_postgres_url(kwargs: dict[str, Any], expected: str) -> None:
    built = build_postgres_url(**kwargs)
    assert built == expected
    assert is_postgres_url(built)
    # What was built survives the trip to asyncpg.
    connect = _dialect_keywords(to_asyncpg(built).url)
    assert connect["user"] == kwargs["user"]
    assert connect.get("password") == (kwargs["password"] or None)
    assert connect["database"] == kwargs["database"]
    assert connect["host"] == kwargs["host"].strip("[]")
    assert connect["port"] == (kwargs["port"] or 5432)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"user": "u", "password": None, "host": "", "port": None, "database": "d"},
        {"user": "u", "password": None, "host": "db", "port": 70000, "database": "d"},
        {"user": "u", "password": None, "host": "db:::x", "port": None, "database": "d"},
    ],
)
def test_build_postgres_url_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(DatabaseUrlError):
        build_postgres_url(**kwargs)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("postgres://u@db/app", True),
        ("postgresql://u:pw@db:5432/app?sslmode=require", True),
        ("postgresql+asyncpg://u@db/app", True),
        ("POSTGRESQL+PSYCOPG://u@db/app", True),
        ("postgresql://", True),
        ("mysql://u@db/app", False),
        ("sqlite:///engram.db", False),
        ("", False),
        # Malformed but meant for PostgreSQL: to_asyncpg() explains what is wrong.
        ("postgresql://u:p@ss@db/app", True),
        ("db.example.com", False),
    ],
)
def test_is_postgres_url(uri: str, expected: bool) -> None:
    assert is_postgres_url(uri) is expected


def test_target_is_frozen() -> None:
    target = to_asyncpg("postgresql://db/app")
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.url = "postgresql://elsewhere/app"  # type: ignore[misc]
