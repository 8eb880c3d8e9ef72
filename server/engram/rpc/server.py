"""Assembling and running the ``grpc.aio`` server.

The order of a start and a stop is what a load balancer or a service mesh
needs to see:

* the listener opens first with health NOT_SERVING, so probes get an answer
  while the database is checked (and, on the embedded default, migrated);
* health turns SERVING only once storage is ready;
* on SIGTERM or SIGINT health turns NOT_SERVING for good, the server keeps
  answering for ``drain_delay_seconds`` so that endpoints can be withdrawn,
  then stops accepting calls and gives in-flight ones
  ``shutdown_grace_seconds`` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.metrics import Meter

from engram.config.settings import Settings
from engram.rpc.application import Application
from engram.rpc.dependency_watch import DependencyWatch
from engram.rpc.interceptors import MethodTable, build_method_table

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# Keepalive suited to long server streams behind proxies: the server pings an
# idle peer every minute and permits client pings down to every 30 seconds.
SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_connection_age_ms", 30 * 60_000),
    ("grpc.max_connection_age_grace_ms", 10 * 60_000),
)


def server_options(*, reuse_port: bool) -> list[tuple[str, int]]:
    """Channel arguments of the server.

    ``SO_REUSEPORT`` is on in gRPC core by default; it stays off unless the
    process is one of ``engram serve --workers N``, so that a port clash
    fails loudly instead of two unrelated servers silently sharing a port.
    """
    return [*SERVER_OPTIONS, ("grpc.so_reuseport", 1 if reuse_port else 0)]


OVERALL_HEALTH = ""
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# How much sooner than calls in flight the runs in progress are stopped at shutdown.
RUN_ENDING_MARGIN_SECONDS = 1.0


@dataclass
class RunningServer:
    """A started server and the handles needed to stop it in order."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    service_names: list[str] = field(default_factory=list)

    async def set_serving(self) -> None:
        await self.set_status(health_pb2.HealthCheckResponse.SERVING)

    async def set_status(self, status: int) -> None:
        """Set the overall status and every Engram service's (all need the database)."""
        for name in (OVERALL_HEALTH, *self.service_names):
            await self.health.set(name, status)

    async def drain(
        self,
        drain_delay: float,
        grace: float,
        drain_runs: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """Report NOT_SERVING, wait for endpoints to be withdrawn, then stop within ``grace``.

        Runs in progress get the same grace as calls in flight, less a second
        to deliver the endings of the runs it interrupts.
        """
        await self.health.enter_graceful_shutdown()
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        if drain_runs is None:
            await self.server.stop(grace)
            return
        # Runs stop a moment before the calls do, so that a stream following an
        # interrupted run still carries its ending to the client.
        run_grace = max(0.0, grace - RUN_ENDING_MARGIN_SECONDS)
        await asyncio.gather(self.server.stop(grace), drain_runs(run_grace))


def _register_api(server: MethodTable, app: Application) -> list[str]:
    """Add the Engram servicers to ``server``'s table; returns their full service names."""
    from engram.api.admin import AdminServicer
    from engram.api.agents import AgentServicer
    from engram.api.archives import ArchiveServicer
    from engram.api.blocks import BlockServicer
    from engram.api.messages import MessageServicer, RunServicer
    from engram.api.providers import ProviderServicer
    from engram.api.sources import SourceServicer
    from engram.api.tools import ToolServicer
    from engram.v1 import (
        admin_service_pb2,
        admin_service_pb2_grpc,
        agent_service_pb2,
        agent_service_pb2_grpc,
        archive_service_pb2,
        archive_service_pb2_grpc,
        block_service_pb2,
        block_service_pb2_grpc,
        message_service_pb2,
        message_service_pb2_grpc,
        provider_service_pb2,
        provider_service_pb2_grpc,
        source_service_pb2,
        source_service_pb2_grpc,
        tool_service_pb2,
        tool_service_pb2_grpc,
    )

    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(app), server)
    block_service_pb2_grpc.add_BlockServiceServicer_to_server(BlockServicer(app), server)
    tool_service_pb2_grpc.add_ToolServiceServicer_to_server(ToolServicer(app), server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(app), server)
    message_service_pb2_grpc.add_MessageServiceServicer_to_server(MessageServicer(app), server)
    message_service_pb2_grpc.add_RunServiceServicer_to_server(RunServicer(app), server)
    provider_service_pb2_grpc.add_ProviderServiceServicer_to_server(ProviderServicer(app), server)
    archive_service_pb2_grpc.add_ArchiveServiceServicer_to_server(ArchiveServicer(app), server)
    source_service_pb2_grpc.add_SourceServiceServicer_to_server(SourceServicer(app), server)
    return [
        str(module.DESCRIPTOR.services_by_name[name].full_name)
        for module, name in (
            (agent_service_pb2, "AgentService"),
            (block_service_pb2, "BlockService"),
            (tool_service_pb2, "ToolService"),
            (admin_service_pb2, "AdminService"),
            (message_service_pb2, "MessageService"),
            (message_service_pb2, "RunService"),
            (provider_service_pb2, "ProviderService"),
            (archive_service_pb2, "ArchiveService"),
            (source_service_pb2, "SourceService"),
        )
    ]


async def start_server(
    settings: Settings,
    *,
    app: Application | None = None,
    meter: Meter | None = None,
    reuse_port: bool = False,
) -> RunningServer:
    """Open the listener with health NOT_SERVING and reflection enabled.

    With ``app``, the Engram services are registered behind the interceptor
    chain; they answer UNAVAILABLE until ``app`` is ready.  ``meter`` None
    records no per-call metrics (the caller has nowhere to export them).
    """
    # Load is shed by the interceptor chain (a rich OVERLOADED status, probes
    # exempt) rather than by grpc's maximum_concurrent_rpcs, which would also
    # turn away health checks and answers without details.
    table = build_method_table(app, meter, max_in_flight=settings.max_concurrent_rpcs)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, table)
    names = _register_api(table, app) if app is not None else []
    table.require([*names, HEALTH_SERVICE])
    server = grpc.aio.server(options=server_options(reuse_port=reuse_port))
    server.add_generic_rpc_handlers((table,))
    for name in (OVERALL_HEALTH, *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        [
            *names,
            HEALTH_SERVICE,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"{settings.host}:{settings.port}"
    port = server.add_insecure_port(address)
    await server.start()
    logger.info(
        "listening on %s:%d (health NOT_SERVING until storage is ready)", settings.host, port
    )
    return RunningServer(server=server, health=health_servicer, port=port, service_names=names)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


async def serve(
    settings: Settings,
    prepare: Callable[[], Awaitable[Callable[[], Awaitable[None]]]],
    *,
    stop: asyncio.Event | None = None,
    app: Application | None = None,
    meter: Meter | None = None,
    reuse_port: bool = False,
) -> None:
    """Run until a stop signal: listen, ``prepare()`` storage, serve, then drain.

    ``prepare`` returns the coroutine function that releases what it opened;
    it runs after the server has stopped.
    """
    stop = stop or asyncio.Event()
    install_stop_signals(stop)
    running = await start_server(settings, app=app, meter=meter, reuse_port=reuse_port)
    try:
        release = await prepare()
    except BaseException:
        await running.server.stop(0)
        raise
    watch: DependencyWatch | None = None
    try:
        await running.set_serving()
        if app is not None and settings.health_check_interval_seconds > 0:
            watch = DependencyWatch(
                app.services.database.ping,
                running.set_status,
                interval=settings.health_check_interval_seconds,
                timeout=max(1.0, settings.health_check_interval_seconds),
            )
            watch.start()
        logger.info("serving on port %d", running.port)
        await stop.wait()
        if watch is not None:
            await watch.stop()
        logger.info(
            "stopping: draining for %.1fs, then %.1fs of grace for calls in flight",
            settings.drain_delay_seconds,
            settings.shutdown_grace_seconds,
        )
        await running.drain(
            settings.drain_delay_seconds,
            settings.shutdown_grace_seconds,
            app.services.drain_runs if app is not None else None,
        )
    finally:
        await release()
    logger.info("stopped")
