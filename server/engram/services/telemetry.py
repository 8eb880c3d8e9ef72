"""Starting and stopping the process's metrics around the storage it watches."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from opentelemetry.sdk.metrics import MeterProvider

from engram.config.settings import Settings
from engram.store.database import Database
from engram.telemetry.metrics import configure_metrics, shutdown_metrics
from engram.telemetry.pool_monitor import PoolMonitor

logger = logging.getLogger(__name__)


@dataclass
class Telemetry:
    provider: MeterProvider
    pool_monitor: PoolMonitor | None

    def close(self) -> None:
        if self.pool_monitor is not None:
            self.pool_monitor.detach()
        shutdown_metrics(self.provider)


def start_telemetry(settings: Settings, database: Database) -> Telemetry:
    """Metrics for this process; pool metrics when ENGRAM_ENABLE_DB_POOL_MONITORING is on."""
    provider = configure_metrics(settings)
    monitor = None
    if settings.enable_db_pool_monitoring:
        monitor = PoolMonitor.attach(database.engine, provider.get_meter("engram.db"))
        logger.info(
            "database pool monitoring on%s",
            f", exporting to {settings.otel_exporter_otlp_endpoint}"
            if settings.otel_exporter_otlp_endpoint
            else " (no OTEL_EXPORTER_OTLP_ENDPOINT: metrics are not exported)",
        )
    return Telemetry(provider=provider, pool_monitor=monitor)
