"""Cancellation signals between servers: "stop run X", wherever X is running.

A run executes on the server that owns it, but a client may ask any server
to cancel it.  The asked server publishes the run id; every server (itself
included) hears it and the owner stops the run.  Delivery is best effort, at
most once, to the subscribers present at the time: the owner also notices
a cancellation from the run's stored status, so a signal lost while a
server was reconnecting only delays the stop.

Each process holds one subscription (one Redis connection) and fans it out
to any number of local iterators.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Self

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from engram.adapters.event_log.base import EventLogUnavailableError

logger = logging.getLogger(__name__)

CANCEL_CHANNEL = "engram:run-cancellations"


class RunSignals(abc.ABC):
    """Publishes run cancellations and delivers everyone's to local subscribers."""

    @abc.abstractmethod
    async def publish_cancel(self, run_id: str) -> None:
        """Tell every server, this one included, that ``run_id`` must stop."""

    @abc.abstractmethod
    def cancellations(self) -> AsyncIterator[str]:
        """Every run id whose cancellation is published from now on, by any process.

        The subscription starts when this is called, not at the first
        ``__anext__``.  The iterator ends when the signals are closed.  It
        should be closed (``aclose``) when no longer needed; one dropped
        without closing is unsubscribed when garbage collected.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering; every open ``cancellations()`` iterator ends."""


class CancellationFeed:
    """One subscriber's queue of cancelled run ids, as an async iterator."""

    def __init__(self, fanout: _Fanout) -> None:
        self._fanout = fanout
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        run_id = await self._queue.get()
        if run_id is None:
            self._queue.put_nowait(None)  # stay ended for later calls
            raise StopAsyncIteration
        return run_id

    async def aclose(self) -> None:
        self._fanout.unsubscribe(self)
        self._queue.put_nowait(None)

    def deliver(self, run_id: str | None) -> None:
        self._queue.put_nowait(run_id)


class _Fanout:
    """The local subscribers of one signals instance."""

    def __init__(self) -> None:
        # Weak: an iterator its consumer dropped stops receiving on its own.
        self._feeds: weakref.WeakSet[CancellationFeed] = weakref.WeakSet()
        self.closed = False

    def subscribe(self) -> CancellationFeed:
        feed = CancellationFeed(self)
        if self.closed:
            feed.deliver(None)
        else:
            self._feeds.add(feed)
        return feed

    def unsubscribe(self, feed: CancellationFeed) -> None:
        self._feeds.discard(feed)

    def deliver(self, run_id: str) -> None:
        for feed in list(self._feeds):
            feed.deliver(run_id)

    def close(self) -> None:
        self.closed = True
        for feed in list(self._feeds):
            feed.deliver(None)
        self._feeds.clear()


class MemoryRunSignals(RunSignals):
    """Cancellations within this process only: the embedded default's."""

    def __init__(self) -> None:
        self._fanout = _Fanout()

    async def publish_cancel(self, run_id: str) -> None:
        if self._fanout.closed:
            raise EventLogUnavailableError("the in-process run signals are closed")
        self._fanout.deliver(run_id)

    def cancellations(self) -> CancellationFeed:
        return self._fanout.subscribe()

    async def close(self) -> None:
        self._fanout.close()


class RedisRunSignals(RunSignals):
    """Cancellations over Redis pub/sub, on channel ``engram:run-cancellations``.

    :meth:`start` subscribes (the factory calls it); a background task then
    listens for the life of the instance.  When the connection fails, the
    task logs it and resubscribes with exponential backoff; when the
    connection goes quiet it pings, and treats an unanswered ping as a lost
    connection, so a dead peer cannot leave it waiting forever.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        channel: str = CANCEL_CHANNEL,
        keepalive_seconds: float = 30.0,
        first_retry_seconds: float = 0.1,
        max_retry_seconds: float = 10.0,
        command_timeout: float = 5.0,
    ) -> None:
        self._client = client
        self._channel = channel
        self._keepalive = keepalive_seconds
        self._first_retry = first_retry_seconds
        self._max_retry = max_retry_seconds
        self._command_timeout = command_timeout
        self._fanout = _Fanout()
        self._subscribed = asyncio.Event()
        self._ever_subscribed = False
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe; return once Redis confirmed it, raise if not within ``command_timeout``."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="run-cancellation-listener"
            )
        try:
            async with asyncio.timeout(self._command_timeout):
                await self._subscribed.wait()
        except TimeoutError:
            raise EventLogUnavailableError(
                f"could not subscribe to Redis channel {self._channel} "
                f"within {self._command_timeout} s"
            ) from None

    async def publish_cancel(self, run_id: str) -> None:
        try:
            async with asyncio.timeout(self._command_timeout):
                await self._client.publish(self._channel, run_id)
        except (RedisError, OSError, TimeoutError) as error:
            raise EventLogUnavailableError(
                f"could not publish the cancellation of run {run_id}: "
                f"{error or type(error).__name__}"
            ) from error

    def cancellations(self) -> CancellationFeed:
        if self._listener is None and not self._fanout.closed:
            raise RuntimeError("RedisRunSignals.start() must be awaited before subscribing")
        return self._fanout.subscribe()

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            # wait(), not await: a cancellation of close() itself must propagate.
            await asyncio.wait([listener])
        self._fanout.close()

    async def _listen(self) -> None:
        """Stay subscribed until cancelled, whatever happens to the connection."""
        delay = self._first_retry
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                await self._pump(pubsub)
            except (RedisError, OSError) as error:
                logger.warning(
                    "lost the Redis subscription to %s (%s); resubscribing in %.1f s",
                    self._channel,
                    error,
                    delay,
                )
            except Exception:
                # Not a connection problem, but the listener must outlive it too.
                logger.exception(
                    "the listener of Redis channel %s failed; resubscribing in %.1f s",
                    self._channel,
                    delay,
                )
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated upstream
            if self._subscribed.is_set():
                # The subscription had worked: this is a fresh outage, retry soon.
                delay = self._first_retry
                self._subscribed.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry)

    async def _pump(self, pubsub: PubSub) -> None:
        """Deliver the channel's messages; raise ConnectionError once the connection is dead.

        redis-py reconnects and resubscribes by itself after a brief failure;
        each (re)subscription shows up here as a ``subscribe`` confirmation.
        """
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=self._keepalive)
            if message is None:
                if pinged:
                    raise ConnectionError(f"no answer to PING within {self._keepalive} s")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            kind = message.get("type")
            if kind == "subscribe":
                if self._ever_subscribed:
                    logger.warning(
                        "resubscribed to Redis channel %s after losing the connection; "
                        "cancellations published meanwhile were not received",
                        self._channel,
                    )
                self._ever_subscribed = True
                self._subscribed.set()
            elif kind == "message":
                data = message["data"]
                run_id = data.decode() if isinstance(data, bytes) else str(data)
                self._fanout.deliver(run_id)
