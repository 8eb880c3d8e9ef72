"""Settings from the environment, LETTA_ aliases, and the choice of database engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from engram.config.database_choice import ConfigurationError, DatabaseEngine, choose_database
from engram.config.settings import Settings, settings_problems

# (variable suffix, value given, settings attribute, expected value)
SEED_VARIABLES = [
    ("PG_POOL_SIZE", "7", "pg_pool_size", 7),
    ("PG_MAX_OVERFLOW", "3", "pg_max_overflow", 3),
    ("PG_POOL_TIMEOUT", "12.5", "pg_pool_timeout", 12.5),
    ("PG_POOL_RECYCLE", "60", "pg_pool_recycle", 60),
    ("PG_ECHO", "true", "pg_echo", True),
    ("POOL_PRE_PING", "false", "pool_pre_ping", False),
    ("POOL_USE_LIFO", "false", "pool_use_lifo", False),
    ("DISABLE_SQLALCHEMY_POOLING", "true", "disable_sqlalchemy_pooling", True),
    ("ENABLE_DB_POOL_MONITORING", "false", "enable_db_pool_monitoring", False),
    ("DB_POOL_MONITORING_INTERVAL", "5", "db_pool_monitoring_interval", 5.0),
    ("PG_DB", "agents", "pg_db", "agents"),
    ("PG_USER", "svc", "pg_user", "svc"),
    ("PG_HOST", "db.internal", "pg_host", "db.internal"),
    ("PG_PORT", "6543", "pg_port", 6543),
    ("DEBUG", "true", "debug", True),
]


def test_seed_defaults() -> None:
    settings = Settings()
    assert settings.pg_pool_size == 25
    assert settings.pg_max_overflow == 10
    assert settings.pg_pool_timeout == 30
    assert settings.pg_pool_recycle == 1800
    assert settings.pg_echo is False
    assert settings.pool_pre_ping is True
    assert settings.pool_use_lifo is True
    assert settings.enable_db_pool_monitoring is True
    assert settings.db_pool_monitoring_interval == 30
    # Ours differs from the reference on purpose: pooling is on.
    assert settings.disable_sqlalchemy_pooling is False
    assert settings.host == "127.0.0.1"
    assert settings.port == 50051


@pytest.mark.parametrize(
    ("variable", "raw", "attribute"),
    [
        ("PORT", "8080", "port"),
        ("HOST", "0.0.0.0", "host"),
        ("DEBUG", "true", "debug"),
        ("REDIS_URL", "redis://elsewhere:6379/0", "redis_url"),
        ("PG_URI", "postgresql://someone@elsewhere/db", "pg_uri"),
    ],
)
def test_bare_names_in_the_environment_are_not_ours(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, attribute: str
) -> None:
    """Platforms set PORT, HOST or REDIS_URL for other programs; only ENGRAM_/LETTA_ count."""
    monkeypatch.setenv(variable, raw)
    assert getattr(Settings(), attribute) == Settings.model_fields[attribute].default


@pytest.mark.parametrize(
    ("variable", "attribute"),
    [("ENGRAM_PORT", "port"), ("ENGRAM_REDIS_PORT", "redis_port"), ("ENGRAM_PG_PORT", "pg_port")],
)
def test_a_port_holding_an_address_names_kubernetes(
    monkeypatch: pytest.MonkeyPatch, variable: str, attribute: str
) -> None:
    monkeypatch.setenv(variable, "tcp://10.96.0.12:6379")
    with pytest.raises(ValidationError) as caught:
        Settings()
    problems = settings_problems(caught.value)
    assert variable in problems
    assert "Kubernetes" in problems
    monkeypatch.setenv(variable, "8080")
    assert getattr(Settings(), attribute) == 8080


def test_code_still_builds_settings_by_field_name() -> None:
    assert Settings(port=8080, debug=True).port == 8080


@pytest.mark.parametrize(("suffix", "raw", "attribute", "expected"), SEED_VARIABLES)
@pytest.mark.parametrize("prefix", ["ENGRAM_", "LETTA_"])
def test_each_variable_reads_under_both_prefixes(
    monkeypatch: pytest.MonkeyPatch,
    prefix: str,
    suffix: str,
    raw: str,
    attribute: str,
    expected: object,
) -> None:
    monkeypatch.setenv(prefix + suffix, raw)
    assert getattr(Settings(), attribute) == expected


def test_engram_spelling_wins_over_letta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETTA_PG_POOL_SIZE", "3")
    monkeypatch.setenv("ENGRAM_PG_POOL_SIZE", "9")
    assert Settings().pg_pool_size == 9


def test_secrets_read_from_both_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETTA_ENCRYPTION_KEY", "legacy-key")
    monkeypatch.setenv("LETTA_PG_PASSWORD", "pw")
    settings = Settings()
    assert settings.encryption_key is not None
    assert settings.encryption_key.get_secret_value() == "legacy-key"
    assert "legacy-key" not in repr(settings)


def test_otel_endpoint_standard_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    assert Settings().otel_exporter_otlp_endpoint == "http://collector:4317"


def test_previous_keys_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGRAM_ENCRYPTION_KEYS_PREVIOUS", "old-1, old-2,")
    keys = [k.get_secret_value() for k in Settings().encryption_keys_previous]
    assert keys == ["old-1", "old-2"]


def test_uri_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETTA_PG_URI", "postgresql://u:p@h:5432/d")
    monkeypatch.setenv("ENGRAM_PG_HOST", "ignored")
    choice = choose_database(Settings())
    assert choice.engine is DatabaseEngine.POSTGRESQL
    assert choice.url == "postgresql://u:p@h:5432/d"
    assert "PG_URI" in choice.reason
    assert "p@" not in choice.redacted_url


def test_parts_build_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"PG_DB": "d", "PG_USER": "u", "PG_HOST": "h"}.items():
        monkeypatch.setenv("ENGRAM_" + name, value)
    choice = choose_database(Settings())
    assert choice.engine is DatabaseEngine.POSTGRESQL
    # No password and no port: both allowed; the port defaults to 5432.
    assert choice.url == "postgresql://u@h:5432/d"


def test_parts_with_special_password(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "PG_DB": "d",
        "PG_USER": "u",
        "PG_HOST": "h",
        "PG_PORT": "6000",
        "PG_PASSWORD": "p@ss:w/rd",
    }.items():
        monkeypatch.setenv("LETTA_" + name, value)
    assert choose_database(Settings()).url == "postgresql://u:p%40ss%3Aw%2Frd@h:6000/d"


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"PG_HOST": "h"}, ["PG_DB", "PG_USER"]),
        ({"PG_DB": "d", "PG_USER": "u"}, ["PG_HOST"]),
        ({"PG_PASSWORD": "secret"}, ["PG_DB", "PG_USER", "PG_HOST"]),
        ({"PG_PORT": "5432", "PG_HOST": "h", "PG_USER": "u"}, ["PG_DB"]),
    ],
)
def test_partial_parts_are_an_error_naming_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, given: dict[str, str], missing: list[str]
) -> None:
    for name, value in given.items():
        monkeypatch.setenv("ENGRAM_" + name, value)
    with pytest.raises(ConfigurationError) as caught:
        choose_database(Settings())
    message = str(caught.value)
    for name in missing:
        assert f"ENGRAM_{name}" in message
    assert "secret" not in message


def test_nothing_configured_means_sqlite_in_the_home_directory(tmp_path: Path) -> None:
    choice = choose_database(Settings())
    assert choice.engine is DatabaseEngine.SQLITE
    assert choice.sqlite_path == Path("~/.engram/engram.db").expanduser()
    assert "SQLite" in choice.reason


def test_empty_uri_means_sqlite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LETTA_PG_URI", "")
    monkeypatch.setenv("ENGRAM_SQLITE_PATH", str(tmp_path / "x.db"))
    choice = choose_database(Settings())
    assert choice.engine is DatabaseEngine.SQLITE
    assert choice.sqlite_path == tmp_path / "x.db"


def test_a_non_postgres_uri_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGRAM_PG_URI", "mysql://u:hunter2@h/d")
    with pytest.raises(ConfigurationError) as caught:
        choose_database(Settings())
    assert "hunter2" not in str(caught.value)
