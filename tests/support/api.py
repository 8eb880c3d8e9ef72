"""A real Engram gRPC server on port 0, and clients that call it through the generated stubs.

The server is the one ``engram serve`` runs (``start_server`` with the full
interceptor chain) over a migrated test database, in API-key mode with two
organizations, so every test can check tenant isolation as well.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from engram.adapters.embeddings.registry import EmbeddingRegistry
from engram.adapters.event_log.factory import EventLogBackend
from engram.adapters.llm.registry import ProviderRegistry
from engram.config.settings import Settings
from engram.rpc.application import Application, Services
from engram.rpc.server import RunningServer, start_server
from engram.secrets import KeyRing
from engram.services.admin import AdminService
from engram.services.auth import ApiKeyAuthenticator, AuthMode
from engram.services.caller import Caller
from engram.store.database import Database
from engram.v1 import (
    admin_service_pb2_grpc,
    agent_service_pb2_grpc,
    archive_service_pb2_grpc,
    block_service_pb2_grpc,
    message_service_pb2_grpc,
    provider_service_pb2_grpc,
    source_service_pb2_grpc,
    tool_service_pb2_grpc,
)


class AuthorizedStub:
    """A generated stub whose every call carries the client's ``authorization`` header."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, method: str) -> Callable[..., Any]:
        return functools.partial(getattr(self._stub, method), metadata=self._metadata)


@dataclass
class Client:
    """Stubs for every Engram service, acting as one API key."""

    caller: Caller
    key: str
    agents: Any
    blocks: Any
    tools: Any
    admin: Any
    messages: Any
    runs: Any
    providers: Any
    archives: Any
    sources: Any

    @classmethod
    def connect(cls, channel: grpc.aio.Channel, caller: Caller, key: str) -> Client:
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        return cls(
            caller=caller,
            key=key,
            agents=AuthorizedStub(agent_service_pb2_grpc.AgentServiceStub(channel), metadata),
            blocks=AuthorizedStub(block_service_pb2_grpc.BlockServiceStub(channel), metadata),
            tools=AuthorizedStub(tool_service_pb2_grpc.ToolServiceStub(channel), metadata),
            admin=AuthorizedStub(admin_service_pb2_grpc.AdminServiceStub(channel), metadata),
            messages=AuthorizedStub(message_service_pb2_grpc.MessageServiceStub(channel), metadata),
            runs=AuthorizedStub(message_service_pb2_grpc.RunServiceStub(channel), metadata),
            providers=AuthorizedStub(
                provider_service_pb2_grpc.ProviderServiceStub(channel), metadata
            ),
            archives=AuthorizedStub(archive_service_pb2_grpc.ArchiveServiceStub(channel), metadata),
            sources=AuthorizedStub(source_service_pb2_grpc.SourceServiceStub(channel), metadata),
        )


@dataclass
class ApiHarness:
    """A running server, its database, and clients for two organizations and no key at all."""

    server: RunningServer
    database: Database
    channel: grpc.aio.Channel
    org_a: Client
    org_b: Client
    member_a: Client
    anonymous: Client
    # The server's services, for tests that must reach behind the API (ingestion slots).
    services: Services

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


async def _organization(admin: AdminService, name: str) -> tuple[Caller, str, Caller, str]:
    """An organization with a user holding an admin key and a plain key."""
    bootstrap = Caller("", "", is_admin=True)
    org = await admin.create_organization(bootstrap, name, "")
    user = await admin.create_user(bootstrap, org.id, f"{name} user", "")
    admin_key = await admin.create_api_key(org.id, user.id, display_name="admin", admin=True)
    plain_key = await admin.create_api_key(org.id, user.id, display_name="member")
    return (
        Caller(org.id, user.id, is_admin=True),
        admin_key.secret,
        Caller(org.id, user.id),
        plain_key.secret,
    )


@asynccontextmanager
async def running_api(
    settings: Settings,
    database: Database,
    providers: ProviderRegistry | None = None,
    keyring: KeyRing | None = None,
    embeddings: EmbeddingRegistry | None = None,
    run_events: EventLogBackend | None = None,
) -> AsyncIterator[ApiHarness]:
    """The harness; without ``keyring`` the server has no encryption key (no stored secrets).

    Without ``embeddings`` the server embeds with the local models only.
    """
    admin = AdminService(database)
    caller_a, key_a, member_a, member_key_a = await _organization(admin, "org-a")
    caller_b, key_b, _, _ = await _organization(admin, "org-b")
    authenticator = ApiKeyAuthenticator(database, AuthMode.API_KEYS, None)
    app = Application(settings)
    server = await start_server(
        settings.model_copy(update={"host": "127.0.0.1", "port": 0}), app=app
    )
    services = Services.build(
        database,
        authenticator,
        providers or ProviderRegistry({}),
        keyring=keyring,
        compaction_trigger=settings.compaction_trigger_fraction,
        embeddings=embeddings,
        run_events=run_events,
        run_lease_seconds=settings.run_lease_seconds,
    )
    await services.prepare()
    services.start()
    app.ready(services)
    await server.set_serving()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield ApiHarness(
            server=server,
            database=database,
            channel=channel,
            org_a=Client.connect(channel, caller_a, key_a),
            org_b=Client.connect(channel, caller_b, key_b),
            member_a=Client.connect(channel, member_a, member_key_a),
            anonymous=Client.connect(channel, Caller("", ""), ""),
            services=services,
        )
    finally:
        await channel.close()
        await server.server.stop(0)
        await services.close()


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The ``google.rpc.Status`` of a failed call (its code and message match the call's)."""
    status = rpc_status.from_call(error)
    if status is None:
        raise AssertionError(f"{error.code()} carried no google.rpc.Status: {error.details()}")
    return status
