"""Settings read from the environment.

Every variable is read as ``ENGRAM_<NAME>``; the database, encryption and
monitoring variables of the seed configuration are also accepted under their
``LETTA_<NAME>`` spelling so that existing deployment files carry over.  When
both spellings are set, the ``ENGRAM_`` one wins.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# ENGRAM_EVENT_LOOP: see engram.config.event_loop.
EventLoopChoice = Literal["auto", "uvloop", "asyncio"]

DEFAULT_HOME = Path("~/.engram")
DEFAULT_SQLITE_FILENAME = "engram.db"
ENCRYPTION_KEY_FILENAME = "encryption.key"


class DocumentedNamesOnly(EnvSettingsSource):
    """The environment, read by each setting's documented names and by nothing else.

    ``populate_by_name`` lets code build ``Settings(port=...)`` by field name,
    but pydantic-settings would then also read the environment by bare field
    name: ``PORT``, ``HOST``, ``DEBUG`` or ``REDIS_URL``, which platforms and
    other programs set for their own purposes, would configure Engram.
    """

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.config = {**self.config, "populate_by_name": False, "validate_by_name": False}


def env(name: str, *, legacy: bool = True, extra: tuple[str, ...] = ()) -> AliasChoices:
    """The environment names a setting answers to, in order of precedence."""
    names = [f"ENGRAM_{name}"]
    if legacy:
        names.append(f"LETTA_{name}")
    names.extend(extra)
    return AliasChoices(*names)


class Settings(BaseSettings):
    """The resolved configuration of one Engram process."""

    model_config = SettingsConfigDict(
        env_prefix="",
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, DocumentedNamesOnly(settings_cls), file_secret_settings)

    # --- PostgreSQL connection -------------------------------------------------
    pg_uri: SecretStr | None = Field(
        None, validation_alias=env("PG_URI"), description="Complete PostgreSQL connection URI."
    )
    pg_db: str | None = Field(None, validation_alias=env("PG_DB"), description="Database name.")
    pg_user: str | None = Field(None, validation_alias=env("PG_USER"), description="User name.")
    pg_password: SecretStr | None = Field(
        None, validation_alias=env("PG_PASSWORD"), description="Password (may be empty)."
    )
    pg_host: str | None = Field(None, validation_alias=env("PG_HOST"), description="Host.")
    pg_port: int | None = Field(
        None, validation_alias=env("PG_PORT"), description="Port (5432 when unset)."
    )

    # --- Connection pool (PostgreSQL) -------------------------------------------
    pg_pool_size: int = Field(25, ge=1, validation_alias=env("PG_POOL_SIZE"))
    pg_max_overflow: int = Field(10, ge=0, validation_alias=env("PG_MAX_OVERFLOW"))
    pg_pool_timeout: float = Field(30.0, gt=0, validation_alias=env("PG_POOL_TIMEOUT"))
    pg_pool_recycle: int = Field(1800, validation_alias=env("PG_POOL_RECYCLE"))
    pg_echo: bool = Field(False, validation_alias=env("PG_ECHO"))
    pool_pre_ping: bool = Field(True, validation_alias=env("POOL_PRE_PING"))
    pool_use_lifo: bool = Field(True, validation_alias=env("POOL_USE_LIFO"))
    # The reference defaults this to true; we pool by default (see README).
    disable_sqlalchemy_pooling: bool = Field(
        False, validation_alias=env("DISABLE_SQLALCHEMY_POOLING")
    )
    pg_statement_timeout_ms: int = Field(
        0,
        ge=0,
        validation_alias=env("PG_STATEMENT_TIMEOUT_MS", legacy=False),
        description="Server-side statement timeout in milliseconds; 0 leaves it off.",
    )

    # --- SQLite (the embedded default) ------------------------------------------
    sqlite_path: Path = Field(
        DEFAULT_HOME / DEFAULT_SQLITE_FILENAME,
        validation_alias=env("SQLITE_PATH", legacy=False),
    )
    sqlite_busy_timeout_ms: int = Field(
        30_000, ge=0, validation_alias=env("SQLITE_BUSY_TIMEOUT_MS", legacy=False)
    )

    # --- Migrations ---------------------------------------------------------------
    auto_migrate: bool | None = Field(
        None,
        validation_alias=env("AUTO_MIGRATE", legacy=False),
        description="Upgrade the schema at startup. Unset: only on the embedded SQLite default.",
    )

    # --- Secrets encryption ---------------------------------------------------------
    encryption_key: SecretStr | None = Field(None, validation_alias=env("ENCRYPTION_KEY"))
    encryption_keys_previous: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        validation_alias=env("ENCRYPTION_KEYS_PREVIOUS", legacy=False),
        description="Comma-separated keys still accepted for reading during a rotation.",
    )
    encryption_key_file: Path | None = Field(
        None,
        validation_alias=env("ENCRYPTION_KEY_FILE", legacy=False),
        description="Where the embedded default keeps its generated key.",
    )

    # --- Telemetry -------------------------------------------------------------------
    enable_db_pool_monitoring: bool = Field(True, validation_alias=env("ENABLE_DB_POOL_MONITORING"))
    db_pool_monitoring_interval: float = Field(
        30.0, gt=0, validation_alias=env("DB_POOL_MONITORING_INTERVAL")
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        validation_alias=env("OTEL_EXPORTER_OTLP_ENDPOINT", extra=("OTEL_EXPORTER_OTLP_ENDPOINT",)),
    )
    debug: bool = Field(False, validation_alias=env("DEBUG"))

    # --- gRPC server -------------------------------------------------------------------
    host: str = Field("127.0.0.1", validation_alias=env("HOST", legacy=False))
    port: int = Field(50051, ge=0, le=65535, validation_alias=env("PORT", legacy=False))
    max_concurrent_rpcs: int = Field(
        1000,
        ge=0,
        validation_alias=env("MAX_CONCURRENT_RPCS", legacy=False),
        description="Calls beyond this many at once get RESOURCE_EXHAUSTED; 0 for no limit.",
    )
    stream_ping_interval_seconds: float = Field(
        15.0,
        gt=0,
        validation_alias=env("STREAM_PING_INTERVAL_SECONDS", legacy=False),
        description="A streamed turn sends a ping after this many seconds without events.",
    )
    stream_coalesce_ms: int = Field(
        50,
        ge=0,
        validation_alias=env("STREAM_COALESCE_MS", legacy=False),
        description=(
            "With token streaming, pieces of the model's answer arriving within this many "
            "milliseconds are merged into one event; 0 sends every piece as it comes."
        ),
    )
    compaction_trigger_fraction: float = Field(
        0.9,
        gt=0,
        le=1,
        validation_alias=env("COMPACTION_TRIGGER_FRACTION", legacy=False),
        description=(
            "An agent's oldest messages are summarized when its next call's context would "
            "pass this fraction of the context window."
        ),
    )
    health_check_interval_seconds: float = Field(
        5.0,
        ge=0,
        validation_alias=env("HEALTH_CHECK_INTERVAL_SECONDS", legacy=False),
        description="How often the database is probed for health; 0 to not probe.",
    )
    drain_delay_seconds: float = Field(
        1.0,
        ge=0,
        validation_alias=env("DRAIN_DELAY_SECONDS", legacy=False),
        description="How long health reports NOT_SERVING before the listener closes.",
    )
    shutdown_grace_seconds: float = Field(
        10.0,
        ge=0,
        validation_alias=env("SHUTDOWN_GRACE_SECONDS", legacy=False),
        description="How long in-flight calls may run after the listener closes.",
    )
    event_loop: EventLoopChoice = Field(
        "auto",
        validation_alias=env("EVENT_LOOP", legacy=False),
        description="The event loop: uvloop when installed (auto), uvloop, or asyncio's own.",
    )

    # --- Embeddings ----------------------------------------------------------------------
    default_embedding: str = Field(
        "local/all-minilm-l6-v2",
        pattern=r"^[^/]+/.+$",
        validation_alias=env("DEFAULT_EMBEDDING", legacy=False),
        description="Embedding handle (provider/model) of agents that name none.",
    )
    embedding_batch_size: int = Field(
        256,
        ge=1,
        le=2048,
        validation_alias=env("EMBEDDING_BATCH_SIZE", legacy=False),
        description="Texts per request to a remote embedding provider.",
    )
    embedding_max_retries: int = Field(
        4,
        ge=0,
        validation_alias=env("EMBEDDING_MAX_RETRIES", legacy=False),
        description="Retries of a remote embedding request on rate limits and transient errors.",
    )
    embedding_timeout_seconds: float = Field(
        60.0, gt=0, validation_alias=env("EMBEDDING_TIMEOUT_SECONDS", legacy=False)
    )
    local_embedding_batch_size: int = Field(
        16,
        ge=1,
        validation_alias=env("LOCAL_EMBEDDING_BATCH_SIZE", legacy=False),
        description="Texts per inference run of the local embedding model.",
    )
    local_embedding_threads: int = Field(
        0,
        ge=0,
        validation_alias=env("LOCAL_EMBEDDING_THREADS", legacy=False),
        description="CPU threads of the local embedding model; 0 for one per physical core.",
    )

    # --- Durable runs ------------------------------------------------------------------
    redis_url: SecretStr | None = Field(
        None,
        validation_alias=env("REDIS_URL", legacy=False),
        description=(
            "Redis keeping the runs' event logs (redis://host:port/db); unset: the "
            "in-process log of the embedded default, which only this process can read."
        ),
    )
    redis_host: str | None = Field(
        None,
        validation_alias=env("REDIS_HOST"),
        description="Redis host, when ENGRAM_REDIS_URL is not given.",
    )
    redis_port: int = Field(6379, ge=1, le=65535, validation_alias=env("REDIS_PORT"))
    redis_max_followers: int = Field(
        10_000,
        ge=1,
        validation_alias=env("REDIS_MAX_FOLLOWERS", legacy=False),
        description=(
            "Streams that may follow runs through Redis at once in one server; each holds a "
            "Redis connection while it waits (keep below Redis's maxclients over all servers)."
        ),
    )
    run_event_retention_seconds: float = Field(
        3 * 3600.0,
        gt=0,
        validation_alias=env("RUN_EVENT_RETENTION_SECONDS", legacy=False),
        description="How long a run's events stay resumable after its last event.",
    )
    run_event_max_length: int = Field(
        10_000,
        ge=100,
        validation_alias=env("RUN_EVENT_MAX_LENGTH", legacy=False),
        description="The most events kept per run; older ones are trimmed (about this many).",
    )
    run_lease_seconds: float = Field(
        30.0,
        gt=0,
        validation_alias=env("RUN_LEASE_SECONDS", legacy=False),
        description=(
            "A running run's owner renews its lease every third of this; a run whose lease "
            "ran out is marked failed by any server."
        ),
    )

    # --- Data sources ------------------------------------------------------------------
    max_upload_bytes: int = Field(
        50 * 1024 * 1024,
        ge=1,
        validation_alias=env("MAX_UPLOAD_BYTES", legacy=False),
        description="Largest file UploadFile accepts, in bytes; larger uploads are refused.",
    )

    @field_validator("pg_uri", "pg_db", "pg_user", "pg_host", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: Any) -> Any:
        """An empty variable (``LETTA_PG_URI=""``) means "not configured"."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("pg_port", mode="before")
    @classmethod
    def _empty_port_means_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("port", "pg_port", "redis_port", mode="before")
    @classmethod
    def _not_a_service_link(cls, value: Any) -> Any:
        """Name the usual cause of ``ENGRAM_PORT=tcp://...`` instead of "not an integer".

        Kubernetes gives every pod ``<SERVICE>_PORT=tcp://<ip>:<port>`` for each
        Service in its namespace: a Service called ``engram`` sets ENGRAM_PORT,
        one called ``engram-redis`` ENGRAM_REDIS_PORT.
        """
        if isinstance(value, str) and value.strip().startswith(("tcp://", "udp://")):
            raise ValueError(
                f"{value!r} is an address, not a port: Kubernetes sets <NAME>_PORT this way for "
                "a Service of that name; set the variable in the container's env (it takes "
                "precedence) or enableServiceLinks: false on the pod"
            )
        return value

    @field_validator("encryption_keys_previous", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("sqlite_path", "encryption_key_file", mode="after")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("redis_url", "redis_host", mode="before")
    @classmethod
    def _empty_redis_means_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def resolved_redis_url(self) -> str | None:
        """Where run event logs live: ENGRAM_REDIS_URL, else host and port; None: in-process."""
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        if self.redis_host:
            return f"redis://{self.redis_host}:{self.redis_port}/0"
        return None

    @property
    def resolved_encryption_key_file(self) -> Path:
        """The generated-key file: configured, or beside the SQLite database."""
        if self.encryption_key_file is not None:
            return self.encryption_key_file
        return self.sqlite_path.parent / ENCRYPTION_KEY_FILENAME


def settings_problems(error: ValidationError) -> str:
    """One line per invalid variable, for a person reading a failed start."""
    lines = ["invalid settings:"]
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "settings"
        message = str(problem["msg"]).removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
