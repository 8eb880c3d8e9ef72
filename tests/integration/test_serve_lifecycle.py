"""Health is NOT_SERVING while storage is prepared, SERVING after, NOT_SERVING while draining."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engram.config.settings import Settings
from engram.rpc.server import serve
from support.postgres import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status(port: int) -> int | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.aio.AioRpcError:
            return None
        return int(reply.status)


async def wait_for_status(port: int, wanted: int) -> None:
    for _ in range(200):
        if await status(port) == wanted:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"health never became {wanted}")


async def test_health_follows_the_lifecycle() -> None:
    port = free_port()
    settings = Settings(port=port, drain_delay_seconds=0.5, shutdown_grace_seconds=0.5)
    storage_ready = asyncio.Event()
    released = asyncio.Event()
    stop = asyncio.Event()

    async def prepare() -> Callable[[], Awaitable[None]]:
        await storage_ready.wait()

        async def release() -> None:
            released.set()

        return release

    server = asyncio.create_task(serve(settings, prepare, stop=stop))
    # The port answers before storage is ready, and says it is not serving yet.
    await wait_for_status(port, NOT_SERVING)
    storage_ready.set()
    await wait_for_status(port, SERVING)
    stop.set()
    await wait_for_status(port, NOT_SERVING)
    await asyncio.wait_for(server, timeout=5)
    assert released.is_set()
    assert await status(port) is None  # the listener is closed


async def test_a_failed_preparation_closes_the_listener() -> None:
    port = free_port()

    async def prepare() -> Callable[[], Awaitable[None]]:
        raise RuntimeError("storage is broken")

    with pytest.raises(RuntimeError, match="storage is broken"):
        await serve(Settings(port=port), prepare, stop=asyncio.Event())
    assert await status(port) is None
