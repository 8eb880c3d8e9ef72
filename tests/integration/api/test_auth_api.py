"""Authentication, request ids and error shape across the whole interceptor chain.

Most tests use the two-organization server of ``support.api``; the local mode and
a server that is still starting get servers of their own over the same database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from engram.adapters.llm.registry import ProviderRegistry
from engram.config.settings import Settings
from engram.rpc.application import Application, Services
from engram.rpc.errors import reason_of, unpack_detail
from engram.rpc.server import RunningServer, start_server
from engram.services.admin import DEFAULT_ORGANIZATION_ID, DEFAULT_USER_ID, AdminService
from engram.services.auth import ApiKeyAuthenticator, AuthMode, decide_auth_mode
from engram.services.blocks import BlockService
from engram.services.caller import Caller
from engram.services.errors import UnauthenticatedError
from engram.store.database import Database
from engram.store.diagnostics import StartupError
from engram.store.ids import IdPrefix, new_id
from engram.store.models import ApiKey
from engram.store.types import utc_now
from engram.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    block_pb2,
    block_service_pb2,
    block_service_pb2_grpc,
)
from support.api import ApiHarness, rich_status

LIST_BLOCKS = block_service_pb2.ListBlocksRequest()
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


async def fails(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def request_ids(metadata: grpc.aio.Metadata | None) -> list[str]:
    return [str(value) for key, value in metadata or () if key == "x-request-id"]


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    info = unpack_detail(rich_status(error), error_details_pb2.ErrorInfo)
    assert info is not None, f"no ErrorInfo in {error.details()}"
    return info


def blocks_stub(api: ApiHarness) -> Any:
    return block_service_pb2_grpc.BlockServiceStub(api.channel)


def bearer(key: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {key}")


@asynccontextmanager
async def serving(
    settings: Settings, app: Application, meter: Meter | None = None
) -> AsyncIterator[tuple[RunningServer, grpc.aio.Channel]]:
    """A server for ``app`` on a free loopback port, and a channel to it."""
    server = await start_server(
        settings.model_copy(update={"host": "127.0.0.1", "port": 0}), app=app, meter=meter
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield server, channel
    finally:
        await channel.close()
        await server.server.stop(0)


# --------------------------------------------------------------------------- credentials


async def test_a_call_without_a_key_is_unauthenticated(api: ApiHarness) -> None:
    error = await fails(api.anonymous.blocks.ListBlocks(LIST_BLOCKS))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_info(error)
    assert info.reason == "UNAUTHENTICATED"
    assert info.domain == "engram.dev"
    assert "authorization: Bearer" in rich_status(error).message


async def test_a_call_with_an_unknown_key_is_unauthenticated(api: ApiHarness) -> None:
    error = await fails(
        blocks_stub(api).ListBlocks(LIST_BLOCKS, metadata=(bearer("engram_not-a-real-key"),))
    )

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).reason == "UNAUTHENTICATED"


async def test_a_malformed_authorization_header_is_unauthenticated(api: ApiHarness) -> None:
    key = api.org_a.key
    headers = [
        "Basic dXNlcjpwYXNz",
        f"Basic {key}",
        "Bearer",
        "Bearer   ",
        f"Bearer{key}",
        f"Token {key}",
        f"Bearer {key} extra",
        "",
    ]
    for header in headers:
        error = await fails(
            blocks_stub(api).ListBlocks(LIST_BLOCKS, metadata=(("authorization", header),))
        )

        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, header
        assert error_info(error).reason == "UNAUTHENTICATED"


async def test_the_bearer_scheme_is_case_insensitive(api: ApiHarness) -> None:
    for scheme in ("bearer", "BEARER", "  Bearer"):
        response = await blocks_stub(api).ListBlocks(
            LIST_BLOCKS, metadata=(("authorization", f"{scheme} {api.org_a.key}"),)
        )

        assert list(response.blocks) == [], scheme


async def test_an_expired_or_revoked_key_is_unauthenticated(api: ApiHarness) -> None:
    admin = AdminService(api.database)
    caller = api.member_a.caller
    expired = await admin.create_api_key(caller.organization_id, caller.user_id)
    revoked = await admin.create_api_key(caller.organization_id, caller.user_id)
    async with api.database.transaction(caller.organization_id) as session:
        expired_row = await session.get(ApiKey, expired.key.id)
        revoked_row = await session.get(ApiKey, revoked.key.id)
        assert expired_row is not None and revoked_row is not None
        expired_row.expires_at = utc_now() - timedelta(seconds=1)
        revoked_row.revoked_at = utc_now()

    for issued in (expired, revoked):
        error = await fails(
            blocks_stub(api).ListBlocks(LIST_BLOCKS, metadata=(bearer(issued.secret),))
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "unknown, revoked or expired" in rich_status(error).message


async def test_a_non_admin_key_is_denied_admin_service(api: ApiHarness) -> None:
    listed = await api.member_a.blocks.ListBlocks(LIST_BLOCKS)
    assert list(listed.blocks) == []

    error = await fails(
        api.member_a.admin.ListOrganizations(admin_service_pb2.ListOrganizationsRequest())
    )

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(error)
    assert info.reason == "PERMISSION_DENIED"
    assert "admin" in rich_status(error).message


async def test_an_admin_key_may_use_admin_service(api: ApiHarness) -> None:
    response = await api.org_a.admin.ListOrganizations(admin_service_pb2.ListOrganizationsRequest())

    assert [o.id for o in response.organizations] == [
        api.org_a.caller.organization_id,
        api.org_b.caller.organization_id,
    ]


async def test_anonymous_admin_calls_are_unauthenticated_not_denied(api: ApiHarness) -> None:
    error = await fails(
        api.anonymous.admin.ListOrganizations(admin_service_pb2.ListOrganizationsRequest())
    )

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --------------------------------------------------------------------------- exempt methods


async def test_health_answers_without_a_key(api: ApiHarness) -> None:
    health = health_pb2_grpc.HealthStub(api.channel)

    for service in ("", "engram.v1.BlockService", "engram.v1.AdminService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_answers_without_a_key(api: ApiHarness) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(api.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="engram.v1.BlockService"),
    ]

    responses = [response async for response in reflection.ServerReflectionInfo(iter(requests))]

    services = {s.name for s in responses[0].list_services_response.service}
    assert {
        "engram.v1.AgentService",
        "engram.v1.BlockService",
        "engram.v1.ToolService",
        "engram.v1.AdminService",
        "grpc.health.v1.Health",
    } <= services
    assert responses[1].file_descriptor_response.file_descriptor_proto


# --------------------------------------------------------------------------- request ids


async def test_a_successful_call_carries_a_generated_request_id(api: ApiHarness) -> None:
    first = blocks_stub(api).ListBlocks(LIST_BLOCKS, metadata=(bearer(api.org_a.key),))
    await first
    second = blocks_stub(api).ListBlocks(LIST_BLOCKS, metadata=(bearer(api.org_a.key),))
    await second

    (first_id,) = request_ids(await first.trailing_metadata())
    (second_id,) = request_ids(await second.trailing_metadata())
    assert GENERATED_ID.match(first_id)
    assert GENERATED_ID.match(second_id)
    assert first_id != second_id


async def test_a_plain_client_request_id_is_echoed(api: ApiHarness) -> None:
    for offered in ("req-123", "trace:abc.DEF_9", "x" * 128):
        call = blocks_stub(api).ListBlocks(
            LIST_BLOCKS, metadata=(bearer(api.org_a.key), ("x-request-id", offered))
        )
        await call

        assert request_ids(await call.trailing_metadata()) == [offered]


async def test_an_unsafe_client_request_id_is_replaced(api: ApiHarness) -> None:
    for offered in ("has spaces", "x" * 129, "semi;colon", "back\\slash", "<script>"):
        call = blocks_stub(api).ListBlocks(
            LIST_BLOCKS, metadata=(bearer(api.org_a.key), ("x-request-id", offered))
        )
        await call

        (returned,) = request_ids(await call.trailing_metadata())
        assert returned != offered
        assert GENERATED_ID.match(returned), offered


async def test_a_failed_call_carries_the_request_id(api: ApiHarness) -> None:
    error = await fails(
        api.org_a.blocks.GetBlock(
            block_service_pb2.GetBlockRequest(name=f"blocks/block-{uuid.uuid4()}")
        )
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND
    (returned,) = request_ids(error.trailing_metadata())
    assert GENERATED_ID.match(returned)


async def test_a_refused_call_echoes_the_client_request_id(api: ApiHarness) -> None:
    unauthenticated = await fails(
        blocks_stub(api).ListBlocks(LIST_BLOCKS, metadata=(("x-request-id", "req-123"),))
    )
    invalid = await fails(
        blocks_stub(api).GetBlock(
            block_service_pb2.GetBlockRequest(name="nonsense"),
            metadata=(bearer(api.org_a.key), ("x-request-id", "req-456")),
        )
    )
    unsafe = await fails(
        blocks_stub(api).ListBlocks(LIST_BLOCKS, metadata=(("x-request-id", "bad id"),))
    )

    assert unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED
    assert request_ids(unauthenticated.trailing_metadata()) == ["req-123"]
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert request_ids(invalid.trailing_metadata()) == ["req-456"]
    (replaced,) = request_ids(unsafe.trailing_metadata())
    assert GENERATED_ID.match(replaced)


# --------------------------------------------------------------------------- server faults


async def test_an_unexpected_failure_is_internal_with_a_correlation_id(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("password=hunter2 leaked from a driver")

    monkeypatch.setattr(BlockService, "list_page", broken)

    error = await fails(
        blocks_stub(api).ListBlocks(
            LIST_BLOCKS, metadata=(bearer(api.org_a.key), ("x-request-id", "req-boom-1"))
        )
    )

    assert error.code() == grpc.StatusCode.INTERNAL
    status = rich_status(error)
    assert status.code == code_pb2.INTERNAL
    assert status.message == "internal error; correlation id req-boom-1"
    assert "hunter2" not in (error.details() or "")
    info = error_info(error)
    assert info.reason == "INTERNAL"
    assert dict(info.metadata) == {"correlation_id": "req-boom-1"}
    assert request_ids(error.trailing_metadata()) == ["req-boom-1"]


async def test_a_generated_correlation_id_matches_the_request_id(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(BlockService, "create", broken)

    error = await fails(
        api.org_a.blocks.CreateBlock(
            block_service_pb2.CreateBlockRequest(block=block_pb2.Block(label="human"))
        )
    )

    assert error.code() == grpc.StatusCode.INTERNAL
    (request_id,) = request_ids(error.trailing_metadata())
    assert GENERATED_ID.match(request_id)
    assert error_info(error).metadata["correlation_id"] == request_id
    assert rich_status(error).message == f"internal error; correlation id {request_id}"
    monkeypatch.undo()
    # The server keeps working after the fault.
    block = await api.org_a.blocks.CreateBlock(
        block_service_pb2.CreateBlockRequest(block=block_pb2.Block(label="human"))
    )
    assert block.label == "human"


async def test_a_server_that_is_still_starting_is_unavailable(
    settings: Settings, database: Database
) -> None:
    app = Application(settings)
    async with serving(settings, app) as (server, channel):
        blocks = block_service_pb2_grpc.BlockServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        error = await fails(
            blocks.ListBlocks(LIST_BLOCKS, metadata=(("x-request-id", "req-early"),))
        )

        assert error.code() == grpc.StatusCode.UNAVAILABLE
        status = rich_status(error)
        assert reason_of(status) == "DATABASE_UNAVAILABLE"
        retry = unpack_detail(status, error_details_pb2.RetryInfo)
        assert retry is not None
        assert retry.retry_delay.seconds == 1
        assert request_ids(error.trailing_metadata()) == ["req-early"]
        checked = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING

        authenticator = await ApiKeyAuthenticator.create(database, "127.0.0.1", insecure=False)
        app.ready(Services.build(database, authenticator, ProviderRegistry({})))
        await server.set_serving()

        response = await blocks.ListBlocks(LIST_BLOCKS)
        assert list(response.blocks) == []
        checked = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert checked.status == health_pb2.HealthCheckResponse.SERVING


# --------------------------------------------------------------------------- call metrics


def call_durations(reader: InMemoryMetricReader) -> dict[tuple[str, int], HistogramDataPoint]:
    """The ``rpc.server.duration`` points read from ``reader``, by method name and status code."""
    points: dict[tuple[str, int], HistogramDataPoint] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "rpc.server.duration":
                    continue
                for point in metric.data.data_points:
                    attributes = point.attributes or {}
                    assert attributes["rpc.system"] == "grpc"
                    assert attributes["rpc.service"] == "engram.v1.BlockService"
                    key = (str(attributes["rpc.method"]), int(attributes["rpc.grpc.status_code"]))
                    assert isinstance(point, HistogramDataPoint)
                    points[key] = point
    return points


async def test_each_call_is_timed_by_method_and_status(
    settings: Settings, database: Database
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    authenticator = await ApiKeyAuthenticator.create(database, "127.0.0.1", insecure=False)
    app = Application(settings)
    app.ready(Services.build(database, authenticator, ProviderRegistry({})))

    async with serving(settings, app, provider.get_meter("engram.rpc")) as (_, channel):
        blocks = block_service_pb2_grpc.BlockServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        await blocks.ListBlocks(LIST_BLOCKS)
        await blocks.ListBlocks(LIST_BLOCKS)
        missing = block_service_pb2.GetBlockRequest(name=f"blocks/{new_id(IdPrefix.BLOCK)}")
        await fails(blocks.GetBlock(missing))
        await health.Check(health_pb2.HealthCheckRequest(service=""))

    points = call_durations(reader)
    provider.shutdown()
    not_found = grpc.StatusCode.NOT_FOUND.value[0]
    # Probes are not Engram calls: health is neither authenticated nor timed.
    assert set(points) == {("ListBlocks", 0), ("GetBlock", not_found)}
    assert points[("ListBlocks", 0)].count == 2
    assert points[("GetBlock", not_found)].count == 1
    assert points[("ListBlocks", 0)].sum > 0


async def test_a_server_without_a_meter_still_serves(
    settings: Settings, database: Database
) -> None:
    authenticator = await ApiKeyAuthenticator.create(database, "127.0.0.1", insecure=False)
    app = Application(settings)
    app.ready(Services.build(database, authenticator, ProviderRegistry({})))

    async with serving(settings, app, None) as (_, channel):
        blocks = block_service_pb2_grpc.BlockServiceStub(channel)
        await blocks.ListBlocks(LIST_BLOCKS)
        error = await fails(
            blocks.GetBlock(
                block_service_pb2.GetBlockRequest(name=f"blocks/{new_id(IdPrefix.BLOCK)}")
            )
        )

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).reason


# --------------------------------------------------------------------------- local mode


async def test_local_mode_lets_a_call_without_a_key_act_in_the_default_organization(
    settings: Settings, database: Database
) -> None:
    authenticator = await ApiKeyAuthenticator.create(database, "127.0.0.1", insecure=False)
    assert authenticator.mode is AuthMode.LOCAL
    assert authenticator.local_caller == Caller(
        DEFAULT_ORGANIZATION_ID, DEFAULT_USER_ID, is_admin=True
    )
    app = Application(settings)
    app.ready(Services.build(database, authenticator, ProviderRegistry({})))

    async with serving(settings, app) as (_, channel):
        blocks = block_service_pb2_grpc.BlockServiceStub(channel)
        created = await blocks.CreateBlock(
            block_service_pb2.CreateBlockRequest(block=block_pb2.Block(label="human", value="hi"))
        )
        organizations = await admin_service_pb2_grpc.AdminServiceStub(channel).ListOrganizations(
            admin_service_pb2.ListOrganizationsRequest()
        )
        malformed = await fails(
            blocks.ListBlocks(LIST_BLOCKS, metadata=(("authorization", "Basic x"),))
        )
        unknown = await fails(blocks.ListBlocks(LIST_BLOCKS, metadata=(bearer("engram_nope"),)))

    view = await BlockService(database).get(
        Caller(DEFAULT_ORGANIZATION_ID, DEFAULT_USER_ID), created.id
    )
    assert view.block.value == "hi"
    assert view.block.organization_id == DEFAULT_ORGANIZATION_ID
    assert [o.id for o in organizations.organizations] == [DEFAULT_ORGANIZATION_ID]
    # A key that is sent must be valid: it never falls back to the local caller.
    assert malformed.code() == grpc.StatusCode.UNAUTHENTICATED
    assert unknown.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_local_authenticator_resolves_callers_directly(database: Database) -> None:
    authenticator = await ApiKeyAuthenticator.create(database, "::1", insecure=False)
    method = "/engram.v1.BlockService/ListBlocks"

    caller = await authenticator.authenticate(None, method)

    assert caller.organization_id == DEFAULT_ORGANIZATION_ID
    assert caller.user_id == DEFAULT_USER_ID
    with pytest.raises(UnauthenticatedError):
        await authenticator.authenticate("", method)
    # Creating the default identity twice is harmless.
    again = await ApiKeyAuthenticator.create(database, "127.0.0.1", insecure=False)
    assert again.local_caller == authenticator.local_caller


async def test_api_key_mode_refuses_a_call_without_a_key(database: Database) -> None:
    authenticator = ApiKeyAuthenticator(database, AuthMode.API_KEYS, None)

    with pytest.raises(UnauthenticatedError):
        await authenticator.authenticate(None, "/engram.v1.BlockService/ListBlocks")


async def test_no_keys_decides_by_address(database: Database) -> None:
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert await decide_auth_mode(database, host, insecure=False) is AuthMode.LOCAL, host
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.com"):
        with pytest.raises(StartupError, match="without authentication"):
            await decide_auth_mode(database, host, insecure=False)
    # --insecure opts into the local mode on any address.
    for host in ("0.0.0.0", "::"):
        assert await decide_auth_mode(database, host, insecure=True) is AuthMode.LOCAL, host


async def test_existing_keys_mean_api_key_mode(database: Database) -> None:
    admin = AdminService(database)
    bootstrap = Caller("", "", is_admin=True)
    organization = await admin.create_organization(bootstrap, "acme", "")
    user = await admin.create_user(bootstrap, organization.id, "ada", "")
    await admin.create_api_key(organization.id, user.id, admin=True)

    for host, insecure in (("0.0.0.0", False), ("127.0.0.1", False), ("0.0.0.0", True)):
        assert await decide_auth_mode(database, host, insecure=insecure) is AuthMode.API_KEYS
    authenticator = await ApiKeyAuthenticator.create(database, "127.0.0.1", insecure=False)
    assert authenticator.mode is AuthMode.API_KEYS
    assert authenticator.local_caller is None
