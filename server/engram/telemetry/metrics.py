"""Building the OpenTelemetry meter provider from the settings.

The provider is returned rather than installed globally: the server decides
whether to call ``opentelemetry.metrics.set_meter_provider`` (which may only
happen once per process), and tests build as many private providers as they
like, each with its own in-memory reader.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource

from engram.config.settings import Settings

SERVICE = "engram"
# How long shutdown may spend flushing the last batch before giving up.
SHUTDOWN_TIMEOUT_MILLIS = 5_000

logger = logging.getLogger(__name__)


def configure_metrics(settings: Settings, *, readers: Sequence[MetricReader] = ()) -> MeterProvider:
    """A meter provider exporting to the configured OTLP endpoint, plus ``readers``.

    Without ``otel_exporter_otlp_endpoint`` no exporter is created at all, so
    an unconfigured server never tries to reach a collector; the extra
    ``readers`` (an in-memory reader in tests, for instance) are always added.
    The export interval follows ``db_pool_monitoring_interval`` because the
    pool gauges are what this export mostly carries: sampling them more often
    than they are shipped would only be thrown away.
    """
    metric_readers: list[MetricReader] = list(readers)
    endpoint = settings.otel_exporter_otlp_endpoint
    if endpoint:
        # Imported here so that a server without a collector never loads the
        # exporter's gRPC and protobuf machinery.
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        metric_readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=endpoint),
                export_interval_millis=settings.db_pool_monitoring_interval * 1000,
            )
        )
    return MeterProvider(
        metric_readers=metric_readers,
        resource=Resource.create({SERVICE_NAME: SERVICE}),
        # The owner shuts the provider down through shutdown_metrics(); an
        # atexit hook as well would run a second shutdown and log a warning.
        shutdown_on_exit=False,
    )


def shutdown_metrics(provider: MeterProvider) -> None:
    """Flush and stop ``provider``'s readers, logging (not raising) any failure.

    Called on the way out of the process, where an unreachable collector must
    not turn a clean shutdown into a crash.
    """
    try:
        provider.shutdown(timeout_millis=SHUTDOWN_TIMEOUT_MILLIS)
    except Exception:
        logger.warning("Shutting down the metrics provider failed", exc_info=True)
