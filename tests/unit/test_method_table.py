"""The server's method table: what the generated registration code hands it, and what it serves."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from engram.rpc.interceptors import MethodTable, build_method_table
from engram.services.caller import Caller
from engram.v1 import block_service_pb2_grpc

BLOCK_SERVICE = "engram.v1.BlockService"
HEALTH_SERVICE = "grpc.health.v1.Health"


class _Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class _Authenticator:
    async def authenticate(self, bearer_token: str | None, method: str) -> Caller:
        return Caller("org", "user")


def _table() -> MethodTable:
    table = build_method_table(_Authenticator(), None)
    block_service_pb2_grpc.add_BlockServiceServicer_to_server(
        block_service_pb2_grpc.BlockServiceServicer(), table
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), table)
    return table


def _behaviour(handler: Any) -> Any:
    return handler.unary_unary or handler.unary_stream


def test_every_registered_method_is_served_and_nothing_else() -> None:
    table = _table()

    assert table.service(_Details(f"/{BLOCK_SERVICE}/GetBlock")) is not None
    assert table.service(_Details(f"/{BLOCK_SERVICE}/ListBlocks")) is not None
    assert table.service(_Details(f"/{HEALTH_SERVICE}/Check")) is not None
    assert table.service(_Details(f"/{BLOCK_SERVICE}/NoSuchMethod")) is None
    assert table.service(_Details("/engram.v1.NoSuchService/GetBlock")) is None


def test_engram_methods_are_wrapped_and_probes_are_not() -> None:
    servicer = health.aio.HealthServicer()
    table = build_method_table(_Authenticator(), None)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, table)
    block_servicer = block_service_pb2_grpc.BlockServiceServicer()
    block_service_pb2_grpc.add_BlockServiceServicer_to_server(block_servicer, table)

    check = table.service(_Details(f"/{HEALTH_SERVICE}/Check"))
    get_block = table.service(_Details(f"/{BLOCK_SERVICE}/GetBlock"))

    # Health is served by the servicer's own method; GetBlock by the chain's wrapper.
    assert _behaviour(check) == servicer.Check
    assert _behaviour(get_block) != block_servicer.GetBlock
    assert _behaviour(get_block).__qualname__.startswith("_wrap_unary_response")


def test_without_an_authenticator_nothing_is_wrapped() -> None:
    block_servicer = block_service_pb2_grpc.BlockServiceServicer()
    table = build_method_table(None, None)
    block_service_pb2_grpc.add_BlockServiceServicer_to_server(block_servicer, table)

    assert _behaviour(table.service(_Details(f"/{BLOCK_SERVICE}/GetBlock"))) == (
        block_servicer.GetBlock
    )


def test_a_service_whose_handlers_never_arrived_fails_the_start() -> None:
    table = _table()
    table.require([BLOCK_SERVICE, HEALTH_SERVICE])

    with pytest.raises(RuntimeError, match=r"engram\.v1\.AgentService"):
        table.require([BLOCK_SERVICE, "engram.v1.AgentService"])
