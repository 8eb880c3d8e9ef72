"""Starting and stopping the process's metrics around the storage it watches."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider

from engram.config.settings import Settings
from engram.store.database import Database
from engram.telemetry.metrics import configure_metrics, shutdown_metrics
from engram.telemetry.pool_monitor import PoolMonitor

logger = logging.getLogger(__name__)


@dataclass
class Telemetry:
    """The process's metrics; the pool monitor joins once storage is open."""

    settings: Settings
    provider: MeterProvider
    pool_monitor: PoolMonitor | None = None

    @classmethod
    def start(cls, settings: Settings) -> Telemetry:
        return cls(settings, configure_metrics(settings))

    def call_meter(self) -> Meter | None:
        """The meter for per-call metrics, or None when nothing exports them.

        Recording a call into the SDK's histogram costs ~10 us of CPU, a few
        percent of a small read's whole cost; without an exporter the numbers
        would only be thrown away.
        """
        if not self.settings.otel_exporter_otlp_endpoint:
            return None
        return self.provider.get_meter("engram.rpc")

    def watch_pool(self, database: Database) -> None:
        """Pool metrics, when ENGRAM_ENABLE_DB_POOL_MONITORING is on."""
        if not self.settings.enable_db_pool_monitoring:
            return
        self.pool_monitor = PoolMonitor.attach(
            database.engine, self.provider.get_meter("engram.db")
        )
        settings = self.settings
        logger.info(
            "database pool monitoring on%s",
            f", exporting to {settings.otel_exporter_otlp_endpoint}"
            if settings.otel_exporter_otlp_endpoint
            else " (no OTEL_EXPORTER_OTLP_ENDPOINT: metrics are not exported)",
        )

    def stop_watching_pool(self) -> None:
        if self.pool_monitor is not None:
            self.pool_monitor.detach()
            self.pool_monitor = None

    def close(self) -> None:
        self.stop_watching_pool()
        shutdown_metrics(self.provider)
