"""Choosing the run event log: Redis when a URL is configured, the in-process log otherwise."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal
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
    _client: redis.Redis | None = field(default=None, repr=False)

    async def close(self) -> None:
        """Stop the signals, close the log, then the Redis connections (if any).

        Cancel the readers first: a Redis reader blocked in a read when its
        connections close is not guaranteed to notice.
        """
        try:
            await self.signals.close()
            await self.log.close()
        finally:
            if self._client is not None:
                await self._client.aclose()


async def open_event_log(
    redis_url: str | None,
    *,
    retention_seconds: float,
    max_length: int,
    connect_timeout: float = 5.0,
) -> EventLogBackend:
    """Open the configured backend; with a URL, fail now (naming it) if Redis does not answer.

    Failing at startup beats failing on the first run: a server that cannot
    reach its Redis would otherwise accept runs nobody else can follow.
    """
    if redis_url is None:
        return EventLogBackend(
            log=MemoryEventLog(retention_seconds=retention_seconds, max_length=max_length),
            signals=MemoryRunSignals(),
            kind="memory",
        )
    # No socket timeout: blocking reads hold their connection for a reader's
    # whole idle period; the log bounds every command with its own timeout.
    client = redis.Redis.from_url(
        redis_url,
        decode_responses=False,
        socket_timeout=None,
        socket_connect_timeout=connect_timeout,
    )
    try:
        await _check_answers(client, redis_url, patience=connect_timeout)
        log = RedisEventLog(client, retention_seconds=retention_seconds, max_length=max_length)
        signals = RedisRunSignals(client, command_timeout=connect_timeout)
        await signals.start()
    except BaseException:
        await client.aclose()
        raise
    return EventLogBackend(log=log, signals=signals, kind="redis", _client=client)


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
