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

    def _timed_get(self) -> ConnectionPoolEntry:
        started = time.perf_counter()
        self.waiting += 1
        try:
            entry = super()._do_get()
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
