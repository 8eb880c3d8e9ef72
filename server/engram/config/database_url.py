"""PostgreSQL connection strings: building, translating and redacting them.

Operators give us URIs in whatever form their other tools use (``postgres://``,
``postgresql://``, ``postgresql+psycopg://`` ...) carrying libpq query
parameters such as ``sslmode`` or ``application_name``.  The server talks to
PostgreSQL through SQLAlchemy's asyncpg dialect, which hands every query
parameter of the URL to ``asyncpg.connect()`` as a keyword argument, untouched
and as a string.  So each libpq spelling has to be translated (``sslmode`` ->
``ssl``), moved into ``connect_args`` with the right Python type
(``connect_timeout`` -> ``timeout`` as a float, ``application_name`` ->
``server_settings``), or refused.  A parameter we cannot carry over is an error
that names it: silently dropping, say, a certificate requirement would be far
worse than failing at start-up.

The URI is parsed here by hand, following libpq's rules, rather than with
``sqlalchemy.engine.make_url``: SQLAlchemy decodes ``+`` in the query as a
space (libpq keeps it), sorts the query parameters when rendering and leaves
the database name unquoted, any of which would change what a URI means to
psql or pg_dump.  The URLs produced for SQLAlchemy are rendered so that its
own parser reads them back exactly (everything outside a plain host name is
percent-encoded).

Everything here is pure: no I/O, no engines, no environment look-ups.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, unquote

__all__ = [
    "ASYNCPG_DRIVERNAME",
    "DEFAULT_PORT",
    "LIBPQ_DRIVERNAME",
    "SSL_MODES",
    "AsyncpgTarget",
    "DatabaseUrlError",
    "build_postgres_url",
    "is_postgres_url",
    "redact_url",
    "to_asyncpg",
    "to_libpq",
]

ASYNCPG_DRIVERNAME = "postgresql+asyncpg"
LIBPQ_DRIVERNAME = "postgresql"
DEFAULT_PORT = 5432
REDACTED = "***"

_POSTGRES_SCHEMES = frozenset({"postgres", "postgresql"})

# The sslmode values libpq defines; asyncpg accepts the very same strings for ``ssl``.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Boolean spellings people put in ``ssl=``.  "True" means "use TLS" here, i.e. require;
# we do not follow asyncpg's own reading of a Python ``True`` (verify-full) because the
# value arrives as text and the weaker, libpq-like meaning is what such URIs intend.
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
_TRUE_WORDS = frozenset({"true", "1", "on", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "off", "no"})

# Query parameters asyncpg.connect() takes as strings, so they may stay in the URL as they
# are.  ``prepared_statement_cache_size`` is consumed (and converted to int) by SQLAlchemy.
_KEPT_AS_TEXT = frozenset(
    {
        "host",
        "port",
        "user",
        "password",
        "passfile",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
        "command_timeout",
        "prepared_statement_cache_size",
    }
)
# asyncpg keywords that it compares as integers; a string from the URL would crash it.
_INTEGER_CONNECT_ARGS = frozenset(
    {"statement_cache_size", "max_cached_statement_lifetime", "max_cacheable_statement_size"}
)
# Client-side tuning of asyncpg or SQLAlchemy with no libpq counterpart.  to_libpq() leaves
# them out: they do not change which server is reached or how, and libpq rejects them.
_ASYNCPG_ONLY = _INTEGER_CONNECT_ARGS | {"command_timeout", "prepared_statement_cache_size"}
# Session settings that libpq-style URIs carry as parameters of their own.
_SETTING_PARAMS = frozenset({"application_name", "search_path", "timezone"})
_TARGET_SESSION_ATTRS = frozenset(
    {"any", "primary", "standby", "prefer-standby", "read-write", "read-only"}
)
# libpq parameters asyncpg only reads from the environment (or a DSN it parses itself).
_ENVIRONMENT_ONLY = {
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
}

_SCHEME = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9.\-]*)(?:\+(?P<driver>[A-Za-z0-9_.\-]+))?://(?P<rest>.*)\Z",
    re.DOTALL,
)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PORT = re.compile(r"[0-9]{1,5}")
_PORT_LIST = re.compile(r"[0-9]{1,5}(?:,[0-9]{1,5})*")
_HOST_CHARACTERS = re.compile(r"[A-Za-z0-9.\-_]+")
_SPECIAL_CHARACTER_HINT = (
    "if the user name or password contains characters such as @ : / ? # or %, "
    "percent-encode them (for example @ as %40)"
)


class DatabaseUrlError(ValueError):
    """A database URI that cannot be used as given; the message says what to change.

    Messages never contain the password: URIs in them are redacted first.
    """


@dataclass(frozen=True)
class AsyncpgTarget:
    """What ``create_async_engine`` needs: the URL and the ``connect_args`` to pass with it.

    Some settings cannot be expressed in the URL's query because SQLAlchemy would hand
    them to asyncpg as strings; they travel in ``connect_args`` with their proper types.
    """

    url: str
    connect_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Parts:
    """The components of a URI, decoded.  ``None`` means "absent", ``""`` "given empty"."""

    scheme: str
    driver: str | None
    user: str | None
    password: str | None
    host: str | None
    port: str | None
    database: str | None
    query: tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------- parsing


def _decode(text: str, what: str) -> str:
    """Percent-decode like libpq: ``+`` stays ``+`` and a stray ``%`` is an error."""
    if _BAD_ESCAPE.search(text):
        raise DatabaseUrlError(
            f"the {what} of the database URI has an invalid percent-escape; "
            "write a literal % as %25"
        )
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError as error:
        raise DatabaseUrlError(
            f"the {what} of the database URI does not decode as UTF-8"
        ) from error


def _split_authority(rest: str) -> tuple[str | None, str, str]:
    """``rest`` (what follows ``://``) as (user info, host and port, remainder).

    Like libpq, the user info ends at the first ``@``; we also stop at ``/`` and ``?``,
    so that an unencoded ``@`` later on is reported instead of being misread.
    """
    end = len(rest)
    for index, character in enumerate(rest):
        if character in "@/?":
            end = index
            break
    userinfo: str | None = None
    if end < len(rest) and rest[end] == "@":
        userinfo, rest = rest[:end], rest[end + 1 :]
    cut = len(rest)
    for index, character in enumerate(rest):
        if character in "/?":
            cut = index
            break
    return userinfo, rest[:cut], rest[cut:]


def _parse_host_port(hostport: str) -> tuple[str | None, str | None]:
    if not hostport:
        return None, None
    if "@" in hostport:
        raise DatabaseUrlError(f"the database URI has more than one '@'; {_SPECIAL_CHARACTER_HINT}")
    if "," in hostport:
        raise DatabaseUrlError(
            "several hosts in the authority of the database URI are not supported; "
            "use the query form ?host=h1,h2&port=p1,p2 instead"
        )
    if hostport.startswith("["):
        close = hostport.find("]")
        if close == -1:
            raise DatabaseUrlError("the IPv6 address in the database URI lacks its closing ']'")
        host_text, after = hostport[1:close], hostport[close + 1 :]
        if after and not after.startswith(":"):
            raise DatabaseUrlError("unexpected text after the IPv6 address in the database URI")
        port_text = after[1:] if after else None
    else:
        host_text, colon, port_text_or_empty = hostport.partition(":")
        port_text = port_text_or_empty if colon else None
        if ":" in port_text_or_empty:
            raise DatabaseUrlError("an IPv6 host in a database URI must be written in [brackets]")
    if port_text is not None:
        if port_text == "":
            port_text = None
        elif not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
            raise DatabaseUrlError(
                "the port of the database URI is not a number from 1 to 65535; "
                + _SPECIAL_CHARACTER_HINT
            )
    host = _decode(host_text, "host") if host_text else None
    return host, port_text


def _parse_query(text: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for piece in text.split("&"):
        if not piece:
            continue
        raw_name, equals, raw_value = piece.partition("=")
        if not equals or not raw_name:
            raise DatabaseUrlError(
                f"the database URI query part {piece!r} is not of the form name=value"
            )
        name = _decode(raw_name, "query parameter name")
        value = _decode(raw_value, f"query parameter {name!r}")
        if name in seen:
            # libpq silently keeps the last one and SQLAlchemy keeps them all; refuse to guess.
            raise DatabaseUrlError(f"the query parameter {name!r} is given more than once")
        seen.add(name)
        pairs.append((name, value))
    return tuple(pairs)


def _parse(url: str) -> _Parts:
    """Split a PostgreSQL URI into decoded parts, or raise :class:`DatabaseUrlError`."""
    if not url.strip():
        raise DatabaseUrlError("the database URI is empty")
    text = url.strip()
    match = _SCHEME.match(text)
    if match is None:
        raise DatabaseUrlError(
            f"{redact_url(text)!r} is not a URI; expected postgresql://user:password@host/db"
        )
    scheme = match["scheme"].lower()
    if scheme not in _POSTGRES_SCHEMES:
        raise DatabaseUrlError(
            f"{redact_url(text)!r} is not a PostgreSQL URI "
            "(expected postgres://, postgresql:// or postgresql+<driver>://)"
        )
    userinfo, hostport, remainder = _split_authority(match["rest"])
    user: str | None = None
    password: str | None = None
    if userinfo is not None:
        raw_user, colon, raw_password = userinfo.partition(":")
        user = _decode(raw_user, "user name")
        password = _decode(raw_password, "password") if colon else None
    host, port = _parse_host_port(hostport)
    path, question, query_text = remainder.partition("?")
    database = _decode(path[1:], "database name") if path.startswith("/") else None
    if database == "":
        database = None
    query = _parse_query(query_text) if question else ()
    return _Parts(
        scheme=scheme,
        driver=match["driver"].lower() if match["driver"] else None,
        user=user or None,
        password=password,
        host=host,
        port=port,
        database=database,
        query=query,
    )


# --------------------------------------------------------------------------- rendering


def _quote_component(text: str) -> str:
    return quote(text, safe="")


def _quote_query_value(text: str) -> str:
    # '/', ':' and ',' are legal in a query and keep socket paths and host lists readable.
    # '@' is always encoded: both libpq and SQLAlchemy would take it for the end of a
    # password if it appeared before any '/'.
    return quote(text, safe="/:,")


def _render_host(host: str, *, for_sqlalchemy: bool) -> str:
    if ":" in host:
        # An IPv6 address, possibly with a zone ("fe80::1%eth0").  SQLAlchemy does not
        # decode the host, so it gets the zone's '%' raw; libpq wants it encoded.
        return f"[{host}]" if for_sqlalchemy else f"[{quote(host, safe=':')}]"
    if for_sqlalchemy and not _HOST_CHARACTERS.fullmatch(host):
        raise DatabaseUrlError(
            f"the host {host!r} cannot be passed through SQLAlchemy's URL; "
            "use a plain host name, an IP address or a socket directory"
        )
    return host if for_sqlalchemy else quote(host, safe="")


def _render(
    scheme: str,
    parts: _Parts,
    query: Iterable[tuple[str, str]],
    *,
    for_sqlalchemy: bool,
) -> str:
    userinfo = ""
    if parts.user is not None or parts.password is not None:
        userinfo = _quote_component(parts.user or "")
        if parts.password is not None:
            userinfo += ":" + _quote_component(parts.password)
        userinfo += "@"
    host = _render_host(parts.host, for_sqlalchemy=for_sqlalchemy) if parts.host else ""
    port = f":{parts.port}" if parts.port else ""
    # The '/' is written even without a database so that nothing in the query can be
    # mistaken for part of the authority.
    database = "/" + _quote_component(parts.database or "")
    rendered_query = "&".join(
        f"{_quote_component(name)}={_quote_query_value(value)}" for name, value in query
    )
    return f"{scheme}://{userinfo}{host}{port}{database}" + (
        f"?{rendered_query}" if rendered_query else ""
    )


# --------------------------------------------------------------------------- values


def _ssl_mode(value: str, name: str) -> str:
    lowered = value.strip().lower()
    if lowered in SSL_MODES:
        return lowered
    if name == "ssl" and lowered in _SSL_BOOLEANS:
        return _SSL_BOOLEANS[lowered]
    raise DatabaseUrlError(
        f"{name}={value!r} is not an SSL mode; use one of {', '.join(SSL_MODES)}"
    )


def _boolean(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE_WORDS:
        return True
    if lowered in _FALSE_WORDS:
        return False
    raise DatabaseUrlError(f"{name}={value!r} is not true or false")


def _seconds(value: str, name: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        # libpq reads 0 as "wait forever"; asyncpg always needs a limit, so make it explicit.
        raise DatabaseUrlError(f"{name}={value!r} must be a positive number of seconds")
    return seconds


def _count(value: str, name: str) -> int:
    if not value.strip().isdigit():
        raise DatabaseUrlError(f"{name}={value!r} must be a whole number, 0 or more")
    return int(value)


def _split_options(options: str) -> list[str]:
    """Split libpq's ``options`` the way the server does: on whitespace, ``\\`` escaping."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    escaped = False
    for character in options:
        if escaped:
            current.append(character)
            escaped = False
        elif character == "\\":
            escaped = True
            in_word = True
        elif character.isspace():
            if in_word:
                words.append("".join(current))
                current = []
                in_word = False
        else:
            current.append(character)
            in_word = True
    if escaped:
        current.append("\\")
    if in_word:
        words.append("".join(current))
    return words


def _options_to_settings(options: str) -> list[tuple[str, str]]:
    """The ``-c name=value`` / ``--name=value`` pairs of ``options``; anything else is refused.

    Other backend switches have no asyncpg equivalent, and guessing would be wrong.
    """
    settings: list[tuple[str, str]] = []
    words = _split_options(options)
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c" and index + 1 < len(words):
            pair, index = words[index + 1], index + 2
        elif word.startswith("--"):
            # The server reads "--name=value" as "-c name=value", with '-' meaning '_'.
            long_name, equals, long_value = word[2:].partition("=")
            pair, index = f"{long_name.replace('-', '_')}{equals}{long_value}", index + 1
        elif word.startswith("-c") and len(word) > 2:
            pair, index = word[2:], index + 1
        else:
            raise DatabaseUrlError(
                f"options={options!r}: only '-c name=value' settings are supported, not {word!r}"
            )
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise DatabaseUrlError(f"options={options!r}: {pair!r} is not name=value")
        settings.append((name, value))
    return settings


def _escape_option(text: str) -> str:
    return "".join("\\" + c if c == "\\" or c.isspace() else c for c in text)


def _settings_to_options(settings: Iterable[tuple[str, str]]) -> str:
    return " ".join(
        f"-c {_escape_option(name)}={_escape_option(value)}" for name, value in settings
    )


def _add_setting(settings: dict[str, str], name: str, value: str) -> None:
    """Record a server setting, refusing two different values for one (case-blind) name."""
    for existing, current in settings.items():
        if existing.lower() == name.lower():
            if current != value:
                raise DatabaseUrlError(
                    f"the server setting {name!r} is given twice with different values"
                )
            return
    settings[name] = value


# --------------------------------------------------------------------------- public API


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names PostgreSQL: a ``postgres``/``postgresql`` scheme, any driver.

    Only the scheme is judged, so that a PostgreSQL URI with a mistake in it is not
    reported as "not PostgreSQL"; :func:`to_asyncpg` then explains the mistake itself.
    """
    match = _SCHEME.match(url.strip())
    return match is not None and match["scheme"].lower() in _POSTGRES_SCHEMES


def build_postgres_url(
    *, user: str, password: str | None, host: str, port: int | None, database: str
) -> str:
    """A libpq-form ``postgresql://`` URI from separately configured parts.

    User and password are percent-encoded so that any character survives.  An empty or
    missing password leaves the colon out, letting libpq and asyncpg fall back to
    ``PGPASSWORD`` or a password file.  A host that is an absolute path is a Unix-socket
    directory; it goes into the ``host`` query parameter, where libpq and (through
    SQLAlchemy) asyncpg both look for it, together with the port, which names the socket.
    """
    if not host:
        raise DatabaseUrlError("a host (name, address or socket directory) is required")
    target_port = DEFAULT_PORT if port is None else port
    if not 0 < target_port < 65536:
        raise DatabaseUrlError(f"the port {target_port} is not a number from 1 to 65535")
    parts = _Parts(
        scheme=LIBPQ_DRIVERNAME,
        driver=None,
        user=user or None,
        password=password or None,
        host=None,
        port=None,
        database=database or None,
        query=(),
    )
    if host.startswith("/"):
        query = (("host", host), ("port", str(target_port)))
        return _render(LIBPQ_DRIVERNAME, parts, query, for_sqlalchemy=False)
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError as error:
            raise DatabaseUrlError(f"the host {host!r} is not a valid IPv6 address") from error
    located = replace(parts, host=bare, port=str(target_port))
    return _render(LIBPQ_DRIVERNAME, located, (), for_sqlalchemy=False)


def to_asyncpg(url: str) -> AsyncpgTarget:
    """The URL for SQLAlchemy's asyncpg dialect, plus the ``connect_args`` to go with it.

    Parameters asyncpg takes as text stay in the query; ``sslmode`` becomes ``ssl``;
    session settings (``application_name``, ``search_path``, ``timezone`` and the
    ``-c`` pairs of ``options``) go to ``connect_args["server_settings"]``; numeric
    keywords go to ``connect_args`` as numbers.  Certificate files cannot be passed as
    keywords, so they are refused with a pointer to the environment variables asyncpg
    reads.  Any other parameter is refused by name rather than dropped.
    """
    parts = _parse(url)
    query: list[tuple[str, str]] = []
    connect_args: dict[str, Any] = {}
    settings: dict[str, str] = {}
    unknown: list[str] = []

    def set_once(key: str, value: Any, name: str) -> None:
        if key in connect_args and connect_args[key] != value:
            raise DatabaseUrlError(f"{name} conflicts with another parameter setting {key}")
        connect_args[key] = value

    ssl_mode: str | None = None
    for name, value in parts.query:
        if name in ("sslmode", "ssl"):
            mode = _ssl_mode(value, name)
            if ssl_mode is not None and mode != ssl_mode:
                raise DatabaseUrlError("sslmode and ssl are both given, with different values")
            if ssl_mode is None:
                query.append(("ssl", mode))
            ssl_mode = mode
        elif name.lower() in _SETTING_PARAMS:
            _add_setting(settings, name, value)
        elif name == "options":
            for setting, setting_value in _options_to_settings(value):
                _add_setting(settings, setting, setting_value)
        elif name in ("connect_timeout", "timeout"):
            set_once("timeout", _seconds(value, name), name)
        elif name in _INTEGER_CONNECT_ARGS:
            connect_args[name] = _count(value, name)
        elif name == "sslnegotiation":
            if value not in ("direct", "postgres"):
                raise DatabaseUrlError(f"sslnegotiation={value!r} must be direct or postgres")
            set_once("direct_tls", value == "direct", name)
        elif name == "direct_tls":
            set_once("direct_tls", _boolean(value, name), name)
        elif name == "dbname":
            # libpq's name for it; asyncpg calls it database.
            query.append(("database", value))
        elif name == "database" or name in _KEPT_AS_TEXT:
            _check_kept(name, value)
            query.append((name, value))
        elif name in _ENVIRONMENT_ONLY:
            raise DatabaseUrlError(
                f"the database URI parameter {name!r} cannot be passed to asyncpg; remove it "
                f"and set the environment variable {_ENVIRONMENT_ONLY[name]} to the same "
                "value instead (asyncpg reads PGSSLROOTCERT, PGSSLCERT and PGSSLKEY itself)"
            )
        elif name == "sslpassword":
            raise DatabaseUrlError(
                "the database URI parameter 'sslpassword' cannot be passed to asyncpg; "
                "use an unencrypted client key and point PGSSLCERT and PGSSLKEY at it"
            )
        else:
            unknown.append(name)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise DatabaseUrlError(
            f"unsupported database URI parameter(s) {names}: asyncpg has no equivalent; "
            "remove them from the URI (server settings can go in options=-c name=value)"
        )
    if settings:
        connect_args["server_settings"] = settings
    if parts.host is not None and parts.host.startswith("/"):
        # A socket directory in the authority ("%2Fvar%2Frun%2Fpostgresql"): SQLAlchemy
        # would not decode it, so it moves to the query, where it is decoded.
        if any(name == "host" for name, _ in query):
            raise DatabaseUrlError("the host is given both in the URI and as ?host=")
        query.insert(0, ("host", parts.host))
        parts = replace(parts, host=None)
    return AsyncpgTarget(
        url=_render(ASYNCPG_DRIVERNAME, parts, query, for_sqlalchemy=True),
        connect_args=connect_args,
    )


def _check_kept(name: str, value: str) -> None:
    """Catch bad values now rather than as a confusing error from deep inside asyncpg."""
    if name == "port" and not _PORT_LIST.fullmatch(value):
        raise DatabaseUrlError(f"port={value!r} must be a port number (or a comma list)")
    if name == "command_timeout":
        _seconds(value, name)
    elif name == "prepared_statement_cache_size":
        _count(value, name)
    elif name == "target_session_attrs" and value not in _TARGET_SESSION_ATTRS:
        raise DatabaseUrlError(
            f"target_session_attrs={value!r} must be one of "
            + ", ".join(sorted(_TARGET_SESSION_ATTRS))
        )


def _whole_seconds(seconds: float) -> str:
    # libpq's connect_timeout is an integer; round up so the limit is never shortened.
    return str(math.ceil(seconds))


def to_libpq(url: str, connect_args: Mapping[str, Any] | None = None) -> str:
    """A plain ``postgresql://`` URI for psql, pg_dump and libpq-based (sync) drivers.

    The reverse of :func:`to_asyncpg`: the driver suffix goes, ``ssl`` becomes
    ``sslmode``, ``database`` becomes ``dbname`` and ``timeout`` ``connect_timeout``.
    Session settings stay in a libpq-understood form: ``application_name`` as itself,
    others as ``-c name=value`` in ``options``.  Pass the ``connect_args`` of an
    :class:`AsyncpgTarget` to restore what :func:`to_asyncpg` moved out of the URL; they
    win over the URL, as they do in ``create_async_engine``.  asyncpg-only client tuning
    (statement caches, ``command_timeout``) is left out because libpq rejects it.
    Parameters this module does not know are libpq's business and are kept.
    """
    parts = _parse(url)
    extra = dict(connect_args or {})
    query: list[tuple[str, str]] = []
    settings: list[tuple[str, str]] = []
    options_at: int | None = None

    def put(name: str, value: str) -> None:
        for index, (existing, _) in enumerate(query):
            if existing == name:
                query[index] = (name, value)
                return
        query.append((name, value))

    for name, value in parts.query:
        if name in ("ssl", "sslmode"):
            put("sslmode", _ssl_mode(value, name))
        elif name == "database":
            put("dbname", value)
        elif name == "timeout":
            put("connect_timeout", _whole_seconds(_seconds(value, name)))
        elif name == "direct_tls":
            put("sslnegotiation", "direct" if _boolean(value, name) else "postgres")
        elif name in _ASYNCPG_ONLY:
            continue
        elif name == "application_name":
            query.append((name, value))
        elif name.lower() in _SETTING_PARAMS or name == "options":
            if options_at is None:
                options_at = len(query)
            if name == "options":
                settings.extend(_options_to_settings(value))
            else:
                settings.append((name, value))
        else:
            query.append((name, value))

    server_settings = extra.pop("server_settings", None) or {}
    if not isinstance(server_settings, Mapping):
        raise DatabaseUrlError("connect_args['server_settings'] must be a mapping")
    for name, value in server_settings.items():
        if name == "application_name":
            put(name, str(value))
            continue
        settings = [(n, v) for n, v in settings if n.lower() != str(name).lower()]
        settings.append((str(name), str(value)))
    if "timeout" in extra:
        put("connect_timeout", _whole_seconds(_seconds(str(extra.pop("timeout")), "timeout")))
    if "direct_tls" in extra:
        put("sslnegotiation", "direct" if extra.pop("direct_tls") else "postgres")
    if isinstance(extra.get("ssl"), str):
        put("sslmode", _ssl_mode(extra.pop("ssl"), "ssl"))
    for name in _ASYNCPG_ONLY:
        extra.pop(name, None)
    if extra:
        raise DatabaseUrlError(
            "connect_args without a libpq equivalent: " + ", ".join(sorted(map(str, extra)))
        )
    if settings:
        position = len(query) if options_at is None else options_at
        query.insert(position, ("options", _settings_to_options(settings)))
    return _render(LIBPQ_DRIVERNAME, parts, query, for_sqlalchemy=False)


# --------------------------------------------------------------------------- redaction

_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)
# One or more "host[:port]" entries, as they appear before the first '/' of a sane URI.
_PLAIN_AUTHORITY = re.compile(
    r"(?:\[[^\]/?@]*\]|[A-Za-z0-9.\-_%]*)(?::[0-9]*)?"
    r"(?:,(?:\[[^\]/?@]*\]|[A-Za-z0-9.\-_%]*)(?::[0-9]*)?)*"
)


def _userinfo_end(rest: str) -> int | None:
    """The index of the '@' that ends the user info of ``rest``, erring towards hiding.

    In a well-formed URI that '@' comes before the first '/' or '?'.  A password with an
    unencoded '/' or '?' pushes it further on; so when the text before the first '/' is
    not plainly "host:port", the last '@' of the string is taken instead and a malformed
    password is hidden rather than printed.  An '@' after a plain host is part of the path
    or query and left alone.
    """
    first_stop = len(rest)
    for index, character in enumerate(rest):
        if character in "/?":
            first_stop = index
            break
    at = rest.rfind("@", 0, first_stop)
    if at != -1:
        return at
    if _PLAIN_AUTHORITY.fullmatch(rest[:first_stop]):
        return None
    at = rest.rfind("@")
    return None if at == -1 else at


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs, errors and ``engram config``.

    Works on any scheme (sqlite, mysql ...) and on malformed URIs, and never raises: it
    edits the text in place instead of parsing and re-rendering, so what is shown is
    otherwise exactly what was configured.  A ``password=`` query parameter is hidden too.
    """
    marker = url.find("://")
    if marker == -1:
        return _QUERY_PASSWORD.sub(rf"\g<1>{REDACTED}", url)
    head, rest = url[: marker + 3], url[marker + 3 :]
    end = _userinfo_end(rest)
    if end is not None:
        user, colon, password = rest[:end].partition(":")
        if colon and password:
            rest = f"{user}:{REDACTED}{rest[end:]}"
    return head + _QUERY_PASSWORD.sub(rf"\g<1>{REDACTED}", rest)
