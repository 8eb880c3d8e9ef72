"""Choosing the run event log: Redis when a URL is configured, the in-process log otherwise."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis
from redis.exceptions import RedisError

from engram.adapters.event_log.base import EventLogUnavailableError, RunEventLog
from engram.adapters.event_log.memory_log import MemoryEventLog
from engram.adapters.event_log.redis_log import RedisEventLog
from engram.adapters.event_log.signals import MemoryRunSignals, RedisRunSignals, RunSignals

BackendKind = Literal["redis", "memory"]


@dataclass(slots=True)
class EventLogBackend:
    """The event log and cancellation signals of one process, and what closes them."""

    log: RunEventLog
    signals: RunSignals
    kind: BackendKind
    _clients: tuple[redis.Redis, ...] = field(default=(), repr=False)

    async def close(self) -> None:
        """Stop the signals, close the log, then the Redis connections (if any).

        Cancel the readers first: a Redis reader blocked in a read when its
        connections close is not guaranteed to notice.
        """
        try:
            await self.signals.close()
            await self.log.close()
        finally:
            for client in self._clients:
                # A client built on a pool it was handed leaves that pool open by default.
                await client.aclose(close_connection_pool=True)


# Connections for appends, bounds and signals: short commands that queue for a
# free connection (BlockingConnectionPool) rather than fail when all are busy.
COMMAND_CONNECTIONS = 32


async def open_event_log(
    redis_url: str | None,
    *,
    retention_seconds: float,
    max_length: int,
    connect_timeout: float = 5.0,
    max_followers: int = 10_000,
) -> EventLogBackend:
    """Open the configured backend; with a URL, fail now (naming it) if Redis does not answer.

    Failing at startup beats failing on the first run: a server that cannot
    reach its Redis would otherwise accept runs nobody else can follow.

    Followers and writers use separate connection pools: every follower
    holds a connection while it blocks on its run's stream, and up to
    ``max_followers`` may (each is one Redis client, counted against Redis's
    ``maxclients``), while a run's appends never wait behind them.
    """
    if redis_url is None:
        return EventLogBackend(
            log=MemoryEventLog(retention_seconds=retention_seconds, max_length=max_length),
            signals=MemoryRunSignals(),
            kind="memory",
        )
    # No socket timeout: blocking reads hold their connection for a reader's
    # whole idle period; the log bounds every command with its own timeout.
    options: dict[str, Any] = {
        "decode_responses": False,
        "socket_timeout": None,
        "socket_connect_timeout": connect_timeout,
    }
    commands = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(
            redis_url, max_connections=COMMAND_CONNECTIONS, timeout=connect_timeout, **options
        )
    )
    followers = redis.Redis.from_url(redis_url, max_connections=max_followers, **options)
    try:
        await _check_answers(commands, redis_url, patience=connect_timeout)
        log = RedisEventLog(
            commands,
            retention_seconds=retention_seconds,
            max_length=max_length,
            reader=followers,
        )
        signals = RedisRunSignals(commands, command_timeout=connect_timeout)
        await signals.start()
    except BaseException:
        await commands.aclose(close_connection_pool=True)
        await followers.aclose(close_connection_pool=True)
        raise
    return EventLogBackend(log=log, signals=signals, kind="redis", _clients=(commands, followers))


async def _check_answers(client: redis.Redis, url: str, *, patience: float) -> None:
    try:
        async with asyncio.timeout(patience):
            await client.ping()
    except (RedisError, OSError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
        raise EventLogUnavailableError(
            f"Redis at {redact_url(url)} did not answer within {patience} s: {reason}"
        ) from error


def redact_url(url: str) -> str:
    """``url`` fit for logs and errors: any password masked, query options dropped."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
