"""The connection pool metrics, read back through an in-memory metric reader.

The load tests run on both engines; each collects the gauges from inside a
task that holds a connection, so the readings taken while other tasks queue
for one are the ones asserted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from engram.config.database_choice import choose_database
from engram.config.settings import Settings
from engram.store.database import Database
from engram.store.engine import SQLITE_POOL_SIZE, create_engine
from engram.telemetry.metrics import configure_metrics, shutdown_metrics
from engram.telemetry.pool_monitor import PoolMonitor

PREFIX = "engram.db.pool."
CONCURRENCY = 20


def _points(data: MetricsData | None, name: str, **attributes: str) -> list[Any]:
    """The data points of metric ``name`` whose attributes include ``attributes``."""
    found: list[Any] = []
    if data is None:
        return found
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name != PREFIX + name:
                    continue
                for point in metric.data.data_points:
                    point_attributes = dict(point.attributes or {})
                    if all(point_attributes.get(k) == v for k, v in attributes.items()):
                        found.append(point)
    return found


def _value(data: MetricsData | None, name: str, **attributes: str) -> float:
    """The single gauge or counter value of ``name`` (0 when never recorded)."""
    points = _points(data, name, **attributes)
    assert len(points) <= 1, points
    return points[0].value if points else 0


def _histogram(data: MetricsData | None, name: str, **attributes: str) -> Any:
    points = _points(data, name, **attributes)
    assert len(points) == 1, f"{name}: {points}"
    return points[0]


def _event_count(data: MetricsData | None, event: str, engine: str) -> float:
    return _value(data, "events", engine=engine, event=event)


async def _run_load(engine: AsyncEngine, reader: InMemoryMetricReader) -> list[MetricsData]:
    """``CONCURRENCY`` tasks each holding a connection briefly; readings taken meanwhile."""
    readings: list[MetricsData] = []

    async def one() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            data = reader.get_metrics_data()
            assert data is not None
            readings.append(data)
            await asyncio.sleep(0.05)

    await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
    return readings


async def test_pool_metrics_under_load(
    engine_kind: str, settings: Settings, database: Database
) -> None:
    reader = InMemoryMetricReader()
    provider = configure_metrics(settings, readers=[reader])
    monitor = PoolMonitor.attach(database.engine, provider.get_meter("engram.tests"))
    try:
        readings = await _run_load(database.engine, reader)
        after = reader.get_metrics_data()

        # Gauges: busy and contended during the load, idle afterwards.
        core = {"engine": "core", "pool.mode": "pooled"}
        assert max(_value(r, "connections.checked_out", **core) for r in readings) > 0
        assert max(_value(r, "waiters", **core) for r in readings) > 0
        assert max(_value(r, "utilization", **core) for r in readings) > 0
        assert _value(after, "connections.checked_out", **core) == 0
        assert _value(after, "waiters", **core) == 0
        assert _value(after, "connections.available", **core) > 0
        expected_max = 10 if engine_kind == "postgresql" else SQLITE_POOL_SIZE
        assert _value(after, "connections.max", **core) == expected_max

        # Every checkout was timed and returned.
        checkouts = _event_count(after, "checkout", "core")
        assert checkouts == CONCURRENCY
        assert _event_count(after, "checkin", "core") == checkouts
        latency = _histogram(after, "checkout.latency", **core)
        assert latency.count == checkouts
        assert latency.max > 0
        hold = _histogram(after, "connection.hold_time", **core)
        assert hold.count == checkouts
        assert hold.min >= 40  # each task held its connection for 50 ms
        connects = _event_count(after, "connect", "core")
        assert connects > 0

        # An invalidated connection is an error, typed "none" when no exception caused it.
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            await connection.invalidate()
        data = reader.get_metrics_data()
        errors = _points(data, "connection.errors", engine="core")
        assert [(dict(p.attributes)["error.type"], p.value) for p in errors] == [("none", 1)]

        # Disposing closes every pooled connection, ending each one's lifetime.
        await database.engine.dispose()
        data = reader.get_metrics_data()
        lifetime = _histogram(data, "connection.lifetime", **core)
        assert lifetime.count == _event_count(data, "connect", "core")
        assert lifetime.count >= connects
        assert lifetime.max > 0
        assert _event_count(data, "close", "core") > 0
    finally:
        monitor.detach()
        shutdown_metrics(provider)


async def test_checkout_timeout_is_counted(settings: Settings) -> None:
    tight = settings.model_copy(
        update={"pg_pool_size": 1, "pg_max_overflow": 0, "pg_pool_timeout": 0.2}
    )
    engine = create_engine(choose_database(tight), tight)
    reader = InMemoryMetricReader()
    provider = configure_metrics(tight, readers=[reader])
    monitor = PoolMonitor.attach(engine, provider.get_meter("engram.tests"), engine_name="tight")
    try:
        # Take every connection the pool will give (SQLite's pool size is fixed).
        size = engine.sync_engine.pool.size()
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(size):
                await stack.enter_async_context(engine.connect())
            with pytest.raises(sa_exc.TimeoutError):
                async with engine.connect():
                    pass
            data = reader.get_metrics_data()
            attributes = {"engine": "tight", "pool.mode": "pooled"}
            assert _value(data, "checkout.timeouts", **attributes) == 1
            assert _value(data, "connections.checked_out", **attributes) == size
            assert _value(data, "connections.max", **attributes) == size
            assert _value(data, "utilization", **attributes) == 1
            # The timed-out attempt is not a checkout.
            assert _histogram(data, "checkout.latency", **attributes).count == size
    finally:
        monitor.detach()
        await engine.dispose()
        shutdown_metrics(provider)


async def test_unpooled_engine_counts_its_own_checkouts(
    engine_kind: str, settings: Settings
) -> None:
    if engine_kind != "postgresql":
        pytest.skip("only PostgreSQL can run without a pool")
    unpooled = settings.model_copy(update={"disable_sqlalchemy_pooling": True})
    engine = create_engine(choose_database(unpooled), unpooled)
    reader = InMemoryMetricReader()
    provider = configure_metrics(unpooled, readers=[reader])
    monitor = PoolMonitor.attach(engine, provider.get_meter("engram.tests"))
    try:
        readings = await _run_load(engine, reader)
        after = reader.get_metrics_data()
        attributes = {"engine": "core", "pool.mode": "unpooled"}
        assert max(_value(r, "connections.checked_out", **attributes) for r in readings) > 0
        assert _value(after, "connections.checked_out", **attributes) == 0
        assert _value(after, "connections.max", **attributes) == 0
        assert _event_count(after, "checkout", "core") == CONCURRENCY
        assert _event_count(after, "checkin", "core") == CONCURRENCY
        # NullPool closes each connection at checkin.
        lifetime = _histogram(after, "connection.lifetime", **attributes)
        assert lifetime.count == CONCURRENCY
    finally:
        monitor.detach()
        await engine.dispose()
        shutdown_metrics(provider)


async def test_detach_stops_recording(settings: Settings, database: Database) -> None:
    reader = InMemoryMetricReader()
    provider = configure_metrics(settings, readers=[reader])
    monitor = PoolMonitor.attach(database.engine, provider.get_meter("engram.tests"))
    try:
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        # Listeners and observers follow the engine onto the pool dispose() creates.
        await database.engine.dispose()
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        data = reader.get_metrics_data()
        assert _event_count(data, "checkout", "core") == 2
        assert _histogram(data, "checkout.latency", engine="core").count == 2

        monitor.detach()
        monitor.detach()  # harmless the second time
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        data = reader.get_metrics_data()
        assert _event_count(data, "checkout", "core") == 2
        assert _histogram(data, "checkout.latency", engine="core").count == 2
        assert _points(data, "connections.checked_out", engine="core") == []
    finally:
        monitor.detach()
        shutdown_metrics(provider)


async def test_a_failing_metric_does_not_fail_the_query(
    settings: Settings, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    reader = InMemoryMetricReader()
    provider = configure_metrics(settings, readers=[reader])
    monitor = PoolMonitor.attach(database.engine, provider.get_meter("engram.tests"))

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("metrics backend exploded")

    caplog.set_level(logging.DEBUG, logger="engram.telemetry.pool_monitor")
    instruments = monitor._instruments
    with pytest.MonkeyPatch.context() as patch:
        for instrument in (instruments.events, instruments.timeouts):
            patch.setattr(instrument, "add", broken)
        for instrument in (instruments.checkout_latency, instruments.hold_time):
            patch.setattr(instrument, "record", broken)
        try:
            async with database.engine.connect() as connection:
                assert (await connection.execute(text("SELECT 1"))).scalar() == 1
            # The connection went back to the pool despite the failures.
            assert database.engine.sync_engine.pool.checkedout() == 0
            assert any("Pool monitoring failed" in r.getMessage() for r in caplog.records)
        finally:
            monitor.detach()
            shutdown_metrics(provider)


def test_two_engines_share_one_meter(tmp_path: Any) -> None:
    """A second monitor on the same meter still gets its own gauge readings."""

    async def run() -> MetricsData | None:
        reader = InMemoryMetricReader()
        provider = configure_metrics(Settings(), readers=[reader])
        meter = provider.get_meter("engram.tests")
        engines = [
            create_engine(choose_database(s), s)
            for s in (
                Settings(sqlite_path=tmp_path / "one.db"),
                Settings(sqlite_path=tmp_path / "two.db"),
            )
        ]
        monitors = [
            PoolMonitor.attach(engine, meter, engine_name=name)
            for engine, name in zip(engines, ("one", "two"), strict=True)
        ]
        try:
            async with engines[1].connect() as connection:
                await connection.execute(text("SELECT 1"))
                return reader.get_metrics_data()
        finally:
            for monitor in monitors:
                monitor.detach()
            for engine in engines:
                await engine.dispose()
            shutdown_metrics(provider)

    data = asyncio.run(run())
    assert _value(data, "connections.checked_out", engine="one") == 0
    assert _value(data, "connections.checked_out", engine="two") == 1


def test_otlp_reader_only_with_an_endpoint() -> None:
    # This SDK keeps the readers on the provider, not in its _sdk_config.
    reader = InMemoryMetricReader()
    provider = configure_metrics(Settings(), readers=[reader])
    try:
        assert list(provider._metric_readers) == [reader]
        resource = provider._sdk_config.resource
        assert resource.attributes["service.name"] == "engram"
    finally:
        shutdown_metrics(provider)

    reader = InMemoryMetricReader()
    configured = Settings(
        otel_exporter_otlp_endpoint="http://127.0.0.1:1", db_pool_monitoring_interval=7.5
    )
    provider = configure_metrics(configured, readers=[reader])
    try:
        readers = list(provider._metric_readers)
        assert readers[0] is reader
        assert len(readers) == 2
        exporting = readers[1]
        assert isinstance(exporting, PeriodicExportingMetricReader)
        assert exporting._export_interval_millis == 7_500
    finally:
        shutdown_metrics(provider)
