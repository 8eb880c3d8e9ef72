"""OpenTelemetry metrics for a SQLAlchemy connection pool.

A :class:`PoolMonitor` watches the pool of one :class:`AsyncEngine` in three
ways:

* SQLAlchemy pool events (connect, checkout, checkin, invalidate, close, ...)
  feed counters and the hold-time and lifetime histograms;
* when the pool is our :class:`~engram.store.pool.ObservedQueuePool`, the
  monitor subscribes as one of its observers, because only the pool itself
  can time how long a caller queued for a connection (pool events fire after
  the connection has been handed out) and see a checkout time out;
* observable gauges read the live pool state when a reader collects, so the
  gauges cost nothing between collections.

Every metric is named ``engram.db.pool.<name>`` and carries the attributes
``engine`` (the name given to :meth:`PoolMonitor.attach`) and ``pool.mode``
(``"pooled"`` for a queue pool, ``"unpooled"`` for ``NullPool`` and any other
pool class, whose checked-out gauge then comes from the monitor's own count).

Monitoring must never hurt the thing it watches: every listener and observer
method swallows (and logs) its own exceptions, because an exception raised
from a pool event would fail the query that triggered it, and one raised from
an observer inside a checkout would even leak the connection being handed out.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, ParamSpec

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import (
    ConnectionPoolEntry,
    Pool,
    PoolProxiedConnection,
    PoolResetState,
    QueuePool,
)
from sqlalchemy.util.queue import AsyncAdaptedQueue

from engram.store.pool import ObservedQueuePool

logger = logging.getLogger(__name__)

PREFIX: Final = "engram.db.pool."
POOLED: Final = "pooled"
UNPOOLED: Final = "unpooled"

# Every pool event the monitor listens to; each one is counted in ``events``.
POOL_EVENTS: Final = (
    "connect",
    "first_connect",
    "checkout",
    "checkin",
    "invalidate",
    "soft_invalidate",
    "close",
    "close_detached",
    "detach",
    "reset",
)

# Bucket hints for the histograms.  The SDK defaults (0 to 10,000 in coarse
# steps) would put every healthy checkout, which takes well under a
# millisecond, into the first bucket.
CHECKOUT_LATENCY_BUCKETS_MS: Final = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
)  # fmt: skip
HOLD_TIME_BUCKETS_MS: Final = (
    0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
)  # fmt: skip
LIFETIME_BUCKETS_S: Final = (
    0.1, 1, 10, 60, 300, 900, 1_800, 3_600, 7_200, 21_600, 86_400,
)  # fmt: skip

P = ParamSpec("P")

# Where a failure has already been logged with its traceback; later failures at
# the same place are logged at debug level only, so a broken metric cannot
# flood the log with one traceback per query.
_reported_failures: set[str] = set()


def _report_failure(where: str) -> None:
    if where in _reported_failures:
        logger.debug("Pool monitoring failed again in %s", where, exc_info=True)
        return
    _reported_failures.add(where)
    logger.warning(
        "Pool monitoring failed in %s; the metric is skipped, the query is not affected",
        where,
        exc_info=True,
    )


def _guarded(method: Callable[P, None]) -> Callable[P, None]:
    """Run ``method``, logging instead of raising whatever it raises.

    The wrapper takes ``*args``, which also tells SQLAlchemy's event system
    that the listener wants the current argument list of an event rather than
    a legacy one.
    """

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            _report_failure(method.__qualname__)

    return wrapper


@dataclass(frozen=True, slots=True)
class PoolState:
    """One reading of a pool's occupancy, as the gauges report it."""

    checked_out: int
    available: int
    overflow: int
    # None when the pool has no upper bound (unlimited overflow or size 0).
    max: int | None
    waiters: int
    utilization: float


def _queue_started(pool: QueuePool) -> bool:
    """Whether the pool's queue exists yet.

    The asyncio queue behind an async pool is created on first use.  Reading
    its size from the exporter's thread before then would create it from
    that thread, racing the event loop's own first use; an unused pool is
    simply empty, so there is nothing to read anyway.
    """
    queue = getattr(pool, "_pool", None)
    return not (isinstance(queue, AsyncAdaptedQueue) and "_queue" not in vars(queue))


GaugeCallback = Callable[[CallbackOptions], Iterable[Observation]]


class _Instruments:
    """The instruments of one meter, shared by every monitor that uses it.

    A meter hands back an existing instrument when one of the same name is
    created again, silently dropping the new callbacks; so the gauges are
    created once per meter and their callbacks report every attached monitor.
    """

    def __init__(self, meter: Meter) -> None:
        self._lock = threading.Lock()
        # Replaced, never mutated, so callbacks may iterate it without the lock.
        self._monitors: tuple[PoolMonitor, ...] = ()

        self.checkout_latency = meter.create_histogram(
            PREFIX + "checkout.latency",
            unit="ms",
            description="How long a caller waited for a connection from the pool.",
            explicit_bucket_boundaries_advisory=CHECKOUT_LATENCY_BUCKETS_MS,
        )
        self.hold_time = meter.create_histogram(
            PREFIX + "connection.hold_time",
            unit="ms",
            description="How long a connection stayed checked out, from checkout to checkin.",
            explicit_bucket_boundaries_advisory=HOLD_TIME_BUCKETS_MS,
        )
        self.lifetime = meter.create_histogram(
            PREFIX + "connection.lifetime",
            unit="s",
            description="How long a database connection lived, from connect to close.",
            explicit_bucket_boundaries_advisory=LIFETIME_BUCKETS_S,
        )
        self.events = meter.create_counter(
            PREFIX + "events",
            unit="{event}",
            description="Pool events, by the event attribute.",
        )
        self.errors = meter.create_counter(
            PREFIX + "connection.errors",
            unit="{error}",
            description="Connections invalidated, by the error.type of the cause.",
        )
        self.timeouts = meter.create_counter(
            PREFIX + "checkout.timeouts",
            unit="{timeout}",
            description="Checkouts that gave up waiting for a free connection.",
        )

        gauges: tuple[tuple[str, str, str, Callable[[PoolState], float | None]], ...] = (
            (
                "connections.checked_out",
                "{connection}",
                "Connections currently checked out of the pool.",
                lambda state: state.checked_out,
            ),
            (
                "connections.available",
                "{connection}",
                "Idle connections waiting in the pool.",
                lambda state: state.available,
            ),
            (
                "connections.overflow",
                "{connection}",
                "Connections open beyond the pool size.",
                lambda state: state.overflow,
            ),
            (
                "connections.max",
                "{connection}",
                "The most connections the pool will open (size plus overflow).",
                lambda state: state.max,
            ),
            (
                "waiters",
                "{waiter}",
                "Callers currently waiting for a connection.",
                lambda state: state.waiters,
            ),
            (
                "utilization",
                "1",
                "Checked-out connections over the pool size; above 1 while in overflow.",
                lambda state: state.utilization,
            ),
        )
        for name, unit, description, read in gauges:
            meter.create_observable_gauge(
                PREFIX + name,
                callbacks=[self._gauge_callback(read)],
                unit=unit,
                description=description,
            )

    def add(self, monitor: PoolMonitor) -> None:
        with self._lock:
            if monitor not in self._monitors:
                self._monitors = (*self._monitors, monitor)

    def remove(self, monitor: PoolMonitor) -> None:
        with self._lock:
            self._monitors = tuple(m for m in self._monitors if m is not monitor)

    def _gauge_callback(self, read: Callable[[PoolState], float | None]) -> GaugeCallback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            observations: list[Observation] = []
            for monitor in self._monitors:
                state = monitor.read_state()
                if state is None:
                    continue
                value = read(state)
                if value is not None:
                    observations.append(Observation(value, monitor.attributes))
            return observations

        return callback


_instruments_lock = threading.Lock()
_instruments_by_meter: weakref.WeakKeyDictionary[Meter, _Instruments] = weakref.WeakKeyDictionary()


def _instruments_for(meter: Meter) -> _Instruments:
    with _instruments_lock:
        instruments = _instruments_by_meter.get(meter)
        if instruments is None:
            instruments = _Instruments(meter)
            _instruments_by_meter[meter] = instruments
        return instruments


class PoolMonitor:
    """Pool metrics for one engine; create it with :meth:`attach`.

    The monitor follows the engine rather than one pool object:
    ``engine.dispose()`` swaps in a fresh pool, which inherits the event
    listeners and observers, and the gauges always read ``engine``'s current
    pool.
    """

    def __init__(self, engine: AsyncEngine, instruments: _Instruments, engine_name: str) -> None:
        self.engine = engine
        self.engine_name = engine_name
        self._instruments = instruments
        # The pool the listeners were registered on.  SQLAlchemy removes them
        # from its successors too when they are removed from this one.
        self._pool: Pool = engine.sync_engine.pool
        self.mode = POOLED if isinstance(self._pool, QueuePool) else UNPOOLED
        self.attributes: dict[str, str] = {"engine": engine_name, "pool.mode": self.mode}
        # Built once so that counting an event allocates nothing.
        self._event_attributes = {name: {**self.attributes, "event": name} for name in POOL_EVENTS}
        # Keys of our own in SQLAlchemy's per-connection dictionaries, distinct
        # per monitor in case two monitors watch the same pool.
        self._connected_at_key = f"engram.pool_monitor.{id(self)}.connected_at"
        self._checked_out_at_key = f"engram.pool_monitor.{id(self)}.checked_out_at"
        self._lock = threading.Lock()
        # Checkouts seen and not yet returned: the checked-out gauge of a pool
        # that keeps no count of its own (NullPool).
        self._checked_out = 0
        # When each detached connection was opened, by id(), until it closes.
        self._detached_connected_at: dict[int, float] = {}
        self._listeners: list[tuple[str, Callable[..., None]]] = []
        self._attached = False

    @classmethod
    def attach(cls, engine: AsyncEngine, meter: Meter, *, engine_name: str = "core") -> PoolMonitor:
        """Start recording ``engine``'s pool metrics on ``meter``."""
        monitor = cls(engine, _instruments_for(meter), engine_name)
        monitor._start()
        return monitor

    @property
    def attached(self) -> bool:
        return self._attached

    def _start(self) -> None:
        listeners: dict[str, Callable[..., None]] = {
            "connect": self._on_connect,
            "first_connect": self._on_first_connect,
            "checkout": self._on_checkout,
            "checkin": self._on_checkin,
            "invalidate": self._on_invalidate,
            "soft_invalidate": self._on_soft_invalidate,
            "close": self._on_close,
            "close_detached": self._on_close_detached,
            "detach": self._on_detach,
            "reset": self._on_reset,
        }
        for name, listener in listeners.items():
            event.listen(self._pool, name, listener)
            self._listeners.append((name, listener))
        if isinstance(self._pool, ObservedQueuePool):
            self._pool.observers.append(self)
        self._instruments.add(self)
        self._attached = True

    def detach(self) -> None:
        """Stop recording; the gauges stop reporting this engine.  Safe to repeat."""
        if not self._attached:
            return
        self._attached = False
        self._instruments.remove(self)
        for name, listener in self._listeners:
            # A listener already gone is what we wanted anyway.
            with contextlib.suppress(InvalidRequestError):
                event.remove(self._pool, name, listener)
        self._listeners.clear()
        for pool in (self._pool, self.engine.sync_engine.pool):
            if isinstance(pool, ObservedQueuePool):
                # A recreated pool shares its predecessor's list; remove each copy.
                while self in pool.observers:
                    pool.observers.remove(self)

    # --- gauges ------------------------------------------------------------------------

    def read_state(self) -> PoolState | None:
        """The engine's current pool occupancy, or None if it cannot be read.

        Called from the metric reader's thread: it only reads counters, and
        takes no lock the event loop could be holding.
        """
        try:
            pool = self.engine.sync_engine.pool
            if isinstance(pool, QueuePool):
                return self._queue_pool_state(pool)
            return PoolState(
                checked_out=self._checked_out,
                available=0,
                overflow=0,
                max=0,
                waiters=0,
                utilization=0.0,
            )
        except Exception:
            _report_failure(f"{type(self).__qualname__}.read_state")
            return None

    @staticmethod
    def _queue_pool_state(pool: QueuePool) -> PoolState:
        size = pool.size()
        started = _queue_started(pool)
        checked_out = pool.checkedout() if started else 0
        max_overflow: int = getattr(pool, "_max_overflow", -1)
        unbounded = size <= 0 or max_overflow < 0
        return PoolState(
            checked_out=checked_out,
            available=pool.checkedin() if started else 0,
            # Negative until the pool has opened its first ``size`` connections.
            overflow=max(pool.overflow(), 0),
            max=None if unbounded else size + max_overflow,
            waiters=pool.waiting if isinstance(pool, ObservedQueuePool) else 0,
            utilization=checked_out / size if size > 0 else 0.0,
        )

    # --- ObservedQueuePool observer ----------------------------------------------------

    @_guarded
    def checkout_waited(self, seconds: float) -> None:
        """Record the wait of one successful checkout (including any connect)."""
        self._instruments.checkout_latency.record(seconds * 1000, self.attributes)

    @_guarded
    def checkout_timed_out(self, seconds: float) -> None:
        """Count a checkout that gave up after waiting ``seconds``."""
        self._instruments.timeouts.add(1, self.attributes)

    # --- pool event listeners ----------------------------------------------------------

    def _count(self, name: str) -> None:
        self._instruments.events.add(1, self._event_attributes[name])

    @_guarded
    def _on_connect(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        # ``info`` lives exactly as long as the DBAPI connection, so a start
        # time kept there is dropped with the connection.
        record.info[self._connected_at_key] = time.monotonic()
        self._count("connect")

    @_guarded
    def _on_first_connect(
        self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry
    ) -> None:
        self._count("first_connect")

    @_guarded
    def _on_checkout(
        self,
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        proxy: PoolProxiedConnection,
    ) -> None:
        self._count("checkout")
        # ``record_info`` rather than ``info``: it survives an invalidation
        # during the checkout, so the hold time is still recorded at checkin.
        info = record.record_info
        if info is not None:
            info[self._checked_out_at_key] = time.perf_counter()
            with self._lock:
                self._checked_out += 1

    @_guarded
    def _on_checkin(
        self, dbapi_connection: DBAPIConnection | None, record: ConnectionPoolEntry
    ) -> None:
        self._count("checkin")
        self._end_checkout(record)

    @_guarded
    def _on_invalidate(
        self,
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        exception: BaseException | None,
    ) -> None:
        self._count("invalidate")
        error_type = type(exception).__name__ if exception is not None else "none"
        self._instruments.errors.add(1, {**self.attributes, "error.type": error_type})
        # The close event that follows finds no start time and records nothing.
        self._end_life(record.info.pop(self._connected_at_key, None))

    @_guarded
    def _on_soft_invalidate(
        self,
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        exception: BaseException | None,
    ) -> None:
        # The connection lives on until its next checkout replaces it, and
        # its lifetime is recorded when it is closed then.
        self._count("soft_invalidate")

    @_guarded
    def _on_close(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        self._count("close")
        self._end_life(record.info.pop(self._connected_at_key, None))

    @_guarded
    def _on_detach(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        self._count("detach")
        # A detached connection is never checked in: its checkout ends here.
        self._end_checkout(record)
        connected_at = record.info.pop(self._connected_at_key, None)
        if connected_at is not None:
            # A connection detached and then never closed leaves its entry
            # here; such a connection is itself a leak the owner must fix.
            self._detached_connected_at[id(dbapi_connection)] = connected_at

    @_guarded
    def _on_close_detached(self, dbapi_connection: DBAPIConnection) -> None:
        self._count("close_detached")
        self._end_life(self._detached_connected_at.pop(id(dbapi_connection), None))

    @_guarded
    def _on_reset(
        self,
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        reset_state: PoolResetState,
    ) -> None:
        self._count("reset")

    def _end_checkout(self, record: ConnectionPoolEntry) -> None:
        info = record.record_info
        started: Any = info.pop(self._checked_out_at_key, None) if info is not None else None
        if started is None:
            return  # checked out before the monitor was attached
        with self._lock:
            self._checked_out -= 1
        self._instruments.hold_time.record((time.perf_counter() - started) * 1000, self.attributes)

    def _end_life(self, connected_at: Any) -> None:
        if connected_at is not None:
            self._instruments.lifetime.record(time.monotonic() - connected_at, self.attributes)
