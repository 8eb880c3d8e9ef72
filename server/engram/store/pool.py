"""A connection pool that reports how long checkouts wait.

SQLAlchemy's pool events fire after a connection has been handed out, so they
cannot tell how long a caller queued for it.  This pool times the checkout
itself, counts callers currently waiting, and reports timeouts, to whoever
subscribed (the telemetry layer); the store itself records nothing.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any, Protocol

from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

_in_checkout: ContextVar[bool] = ContextVar("engram_in_checkout", default=False)

# A connection handed back in working order less than this long ago is not
# pinged again on checkout (see ObservedQueuePool._skip_ping_if_recent).
RECENT_USE_SECONDS = 1.0
_RETURNED_AT = "engram_returned_at"


class CheckoutObserver(Protocol):
    def checkout_waited(self, seconds: float) -> None: ...

    def checkout_timed_out(self, seconds: float) -> None: ...


class ObservedQueuePool(AsyncAdaptedQueuePool):
    """``AsyncAdaptedQueuePool`` with checkout timing and a waiter count."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.observers: list[CheckoutObserver] = []
        self.waiting = 0

    def recreate(self) -> ObservedQueuePool:
        fresh = super().recreate()
        assert isinstance(fresh, ObservedQueuePool)
        fresh.observers = self.observers
        return fresh

    def _do_get(self) -> ConnectionPoolEntry:
        # QueuePool._do_get calls itself again when it loses a race for an
        # overflow slot; only the outermost call is one checkout.
        if _in_checkout.get():
            return super()._do_get()
        token = _in_checkout.set(True)
        try:
            return self._timed_get()
        finally:
            _in_checkout.reset(token)

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        # ``info`` lives as long as the DBAPI connection: a reconnected or
        # invalidated record starts without the stamp.
        if record.dbapi_connection is not None:
            record.info[_RETURNED_AT] = time.monotonic()
        super()._do_return_conn(record)

    def _timed_get(self) -> ConnectionPoolEntry:
        started = time.perf_counter()
        self.waiting += 1
        try:
            entry = _skip_ping_if_recent(super()._do_get())
        except PoolTimeoutError:
            elapsed = time.perf_counter() - started
            for observer in self.observers:
                observer.checkout_timed_out(elapsed)
            raise
        finally:
            self.waiting -= 1
        elapsed = time.perf_counter() - started
        for observer in self.observers:
            observer.checkout_waited(elapsed)
        return entry


def _skip_ping_if_recent(record: ConnectionPoolEntry) -> ConnectionPoolEntry:
    """Let a connection that was in use a moment ago skip the pre-ping.

    The pre-ping exists for connections that went stale while idle in the pool
    (a database restart, an idle timeout).  On asyncpg it costs three round
    trips (BEGIN, ``;``, ROLLBACK), which for a point read is more than the
    read itself.  A connection returned healthy within
    :data:`RECENT_USE_SECONDS`, whose socket the driver has not seen closed,
    is as good as pinged; SQLAlchemy's own flag for a connection it has just
    opened, ``fresh``, makes the checkout skip the ping.  Longer idle
    connections are pinged as before, and a failure on a recent one still
    invalidates the pool the usual way.
    """
    returned_at = record.info.get(_RETURNED_AT)
    if returned_at is None or time.monotonic() - returned_at > RECENT_USE_SECONDS:
        return record
    is_closed = getattr(record.driver_connection, "is_closed", None)
    if is_closed is not None and is_closed():
        return record
    record.fresh = True  # type: ignore[attr-defined]  # _ConnectionRecord's, not the interface's
    return record
