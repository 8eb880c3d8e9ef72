"""Tenant isolation across every AgentService, BlockService and ToolService RPC.

Two organizations each own an agent (with an inline memory block and a custom
tool attached), a standalone block and that tool.  Every RPC that takes a
resource name is called by one organization with the other's names; the
answer must be NOT_FOUND with exactly the status a name that never existed
gets (same code, same ErrorInfo, same message but for the id), and afterwards
nothing either organization owns may have changed by a single byte.  Creates
that carry another organization's resource name, request id or tool name
must create a resource of the caller's own.  Lists and counts only ever show
the caller's resources.

The cases share one server per engine, and each case gets two organizations of
its own, so they stay independent without paying for a fresh database each.

A coverage test reads the services' descriptors, so an RPC added later that
takes a resource name fails the suite until it gets an isolation case here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.api import resource_pb2
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from engram.config.database_choice import choose_database
from engram.config.settings import Settings
from engram.services.admin import AdminService
from engram.services.caller import Caller
from engram.store.database import Database
from engram.store.engine import create_engine
from engram.v1 import (
    agent_pb2,
    agent_service_pb2,
    block_pb2,
    block_service_pb2,
    tool_pb2,
    tool_service_pb2,
)
from support.api import ApiHarness, Client, rich_status, running_api
from support.postgres import EmbeddedPostgres

ENGINES = ("sqlite", "postgresql")
# The cases share one server per engine (see shared_api), so they share its event loop.
on_shared_loop = pytest.mark.asyncio(loop_scope="module")

SERVICE_MODULES = {
    "AgentService": agent_service_pb2,
    "BlockService": block_service_pb2,
    "ToolService": tool_service_pb2,
}

# RPCs that take no resource name; the list cases below cover them.
LIST_RPCS = frozenset(
    {
        "AgentService/ListAgents",
        "AgentService/CountAgents",
        "BlockService/ListBlocks",
        "ToolService/ListTools",
    }
)

ID_PREFIXES = {"agents": "agent", "blocks": "block", "tools": "tool"}


def tool_source(function: str, summary: str) -> str:
    return (
        f"def {function}(reference: str, urgent: bool = False) -> str:\n"
        f'    """{summary}\n'
        "\n"
        "    Args:\n"
        "        reference: What to look up.\n"
        "        urgent: Whether to hurry.\n"
        '    """\n'
        "    return reference\n"
    )


@dataclass(frozen=True)
class Tenant:
    """One organization's client and the resources it created."""

    client: Client
    agent: agent_pb2.Agent
    agent_block: block_pb2.Block  # created inline with the agent, attached to it
    block: block_pb2.Block  # standalone, attached to nothing
    tool: tool_pb2.Tool  # custom, attached to the agent
    display_name: str
    agent_tag: str
    tool_tag: str
    agent_request_id: str
    block_request_id: str
    tool_request_id: str


@dataclass(frozen=True)
class World:
    a: Tenant
    b: Tenant

    def tenant(self, key: str) -> Tenant:
        return self.a if key == "a" else self.b

    def other(self, key: str) -> Tenant:
        return self.b if key == "a" else self.a


async def create_tenant(client: Client, word: str, function: str) -> Tenant:
    """Three creates per organization; every created resource carries ``word``."""
    agent_request_id, block_request_id, tool_request_id = (str(uuid.uuid4()) for _ in range(3))
    tool = await client.tools.CreateTool(
        tool_service_pb2.CreateToolRequest(
            tool=tool_pb2.Tool(
                source_code=tool_source(function, f"The {word} lookup."),
                tags=[f"{word}-tool"],
                metadata=struct_pb2.Struct(fields={"owner": struct_pb2.Value(string_value=word)}),
            ),
            request_id=tool_request_id,
        )
    )
    block = await client.blocks.CreateBlock(
        block_service_pb2.CreateBlockRequest(
            block=block_pb2.Block(label="notes", value=f"{word} notes", description=word),
            request_id=block_request_id,
        )
    )
    agent = await client.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(
                display_name=f"{word} agent",
                description=f"the {word} agent",
                tags=[word],
            ),
            memory_blocks=[block_pb2.Block(label="human", value=f"{word} human")],
            tool_names=[tool.name],
            include_base_tools=False,
            request_id=agent_request_id,
        )
    )
    assert list(agent.tools) == [tool.name]
    assert len(agent.blocks) == 1
    agent_block = await client.blocks.GetBlock(
        block_service_pb2.GetBlockRequest(name=agent.blocks[0])
    )
    return Tenant(
        client=client,
        agent=agent,
        agent_block=agent_block,
        block=block,
        tool=tool,
        display_name=f"{word} agent",
        agent_tag=word,
        tool_tag=f"{word}-tool",
        agent_request_id=agent_request_id,
        block_request_id=block_request_id,
        tool_request_id=tool_request_id,
    )


async def new_organization(api: ApiHarness, word: str) -> Client:
    """A fresh organization with an admin key, so that tests sharing a server never meet."""
    admin = AdminService(api.database)
    bootstrap = Caller("", "", is_admin=True)
    organization = await admin.create_organization(bootstrap, f"{word} {uuid.uuid4().hex}", "")
    user = await admin.create_user(bootstrap, organization.id, f"{word} user", "")
    key = await admin.create_api_key(organization.id, user.id, display_name="admin", admin=True)
    return Client.connect(api.channel, Caller(organization.id, user.id, is_admin=True), key.secret)


@pytest.fixture(scope="module", params=ENGINES)
def shared_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """A migrated database of each engine for the whole module (the ``settings`` fixture, once).

    Starting a server over a fresh database costs more than the cases themselves, and
    every case gets organizations of its own, so one server per engine serves them all.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(("ENGRAM_", "LETTA_", "OTEL_")):
                patch.delenv(name)
        if request.param == "sqlite":
            template: Path = request.getfixturevalue("sqlite_template")
            path = tmp_path_factory.mktemp("isolation") / "engram.db"
            shutil.copyfile(template, path)
            return Settings(sqlite_path=path, encryption_key="test-key")
        server: EmbeddedPostgres = request.getfixturevalue("postgres_server")
        template_name: str = request.getfixturevalue("postgres_template")
        database = f"engram_isolation_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        server.psql(f"CREATE DATABASE {database} TEMPLATE {template_name}")
        return Settings(
            pg_uri=server.url(database),
            encryption_key="test-key",
            pg_pool_size=5,
            pg_max_overflow=5,
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_api(shared_settings: Settings) -> AsyncIterator[ApiHarness]:
    choice = choose_database(shared_settings)
    database = Database(create_engine(choice, shared_settings), choice)
    try:
        async with running_api(shared_settings, database) as harness:
            yield harness
    finally:
        await database.dispose()


@pytest_asyncio.fixture(loop_scope="module")
async def world(shared_api: ApiHarness) -> World:
    alpha, beta = await asyncio.gather(
        new_organization(shared_api, "alpha"), new_organization(shared_api, "beta")
    )
    a, b = await asyncio.gather(
        create_tenant(alpha, "alpha", "lookup_order"),
        create_tenant(beta, "beta", "quote_shipping"),
    )
    return World(a=a, b=b)


def stub_of(client: Client, service: str) -> Any:
    return {
        "AgentService": client.agents,
        "BlockService": client.blocks,
        "ToolService": client.tools,
    }[service]


async def call(client: Client, rpc: str, request: Message) -> Any:
    service, method = rpc.split("/")
    return await getattr(stub_of(client, service), method)(request)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def snapshot(tenant: Tenant) -> dict[str, bytes]:
    """Everything the tenant owns, as its own client reads it, serialized deterministically.

    Agents carry their block and tool names and blocks their agent names, so the lists
    also pin every link; a list grows if a refused create left anything behind.
    """
    agents, blocks, tools = tenant.client.agents, tenant.client.blocks, tenant.client.tools
    reads: dict[str, Awaitable[Message]] = {
        "GetAgent": agents.GetAgent(agent_service_pb2.GetAgentRequest(name=tenant.agent.name)),
        "GetBlock(agent_block)": blocks.GetBlock(
            block_service_pb2.GetBlockRequest(name=tenant.agent_block.name)
        ),
        "GetBlock(block)": blocks.GetBlock(
            block_service_pb2.GetBlockRequest(name=tenant.block.name)
        ),
        "GetTool": tools.GetTool(tool_service_pb2.GetToolRequest(name=tenant.tool.name)),
        "ListAgents": agents.ListAgents(agent_service_pb2.ListAgentsRequest(page_size=1000)),
        "ListBlocks": blocks.ListBlocks(block_service_pb2.ListBlocksRequest(page_size=1000)),
        "ListTools": tools.ListTools(tool_service_pb2.ListToolsRequest(page_size=1000)),
    }
    results = await asyncio.gather(*reads.values(), return_exceptions=True)
    return {key: serialized(result) for key, result in zip(reads, results, strict=True)}


def serialized(result: Message | BaseException) -> bytes:
    """A read's bytes; a read that failed (say, the resource vanished) as its status."""
    if isinstance(result, grpc.aio.AioRpcError):
        return f"{result.code().name}: {result.details()}".encode()
    if isinstance(result, BaseException):
        raise result
    return result.SerializeToString(deterministic=True)


def assert_unchanged(before: dict[str, bytes], after: dict[str, bytes], owner: str) -> None:
    changed = sorted(key for key in before if before[key] != after[key])
    assert not changed, f"org {owner}'s resources changed: {changed}"


# --- the NOT_FOUND matrix ---------------------------------------------------------------


@dataclass(frozen=True)
class Denied:
    """One RPC called by ``actor`` with a name (``target``) that belongs to the other org."""

    case_id: str
    rpc: str
    target: Callable[[World], str]
    request: Callable[[World, str], Message]
    actor: str = "b"


def missing_like(name: str) -> str:
    """A name of the same kind as ``name`` that never existed."""
    collection, slash, _ = name.partition("/")
    if slash:
        return f"{collection}/{ID_PREFIXES[collection]}-{uuid.uuid4()}"
    return f"absent_{uuid.uuid4().hex[:12]}"


def new_agent(**fields: Any) -> agent_service_pb2.CreateAgentRequest:
    return agent_service_pb2.CreateAgentRequest(
        agent=agent_pb2.Agent(display_name="intruder"), include_base_tools=False, **fields
    )


def a_agent(w: World) -> str:
    return w.a.agent.name


def a_block(w: World) -> str:
    return w.a.block.name


def a_agent_block(w: World) -> str:
    return w.a.agent_block.name


def a_tool(w: World) -> str:
    return w.a.tool.name


AS = agent_service_pb2
BS = block_service_pb2
TS = tool_service_pb2

DENIED = [
    # AgentService, org B with org A's names.
    Denied("GetAgent", "AgentService/GetAgent", a_agent, lambda w, n: AS.GetAgentRequest(name=n)),
    Denied(
        "UpdateAgent",
        "AgentService/UpdateAgent",
        a_agent,
        lambda w, n: AS.UpdateAgentRequest(
            agent=agent_pb2.Agent(name=n, display_name="hijacked"), update_mask=mask("display_name")
        ),
    ),
    Denied(
        "UpdateAgent-stolen-etag",
        "AgentService/UpdateAgent",
        a_agent,
        lambda w, n: AS.UpdateAgentRequest(
            agent=agent_pb2.Agent(name=n, description="hijacked", etag=w.a.agent.etag),
            update_mask=mask("description"),
        ),
    ),
    Denied(
        "UpdateAgent-wildcard-mask",
        "AgentService/UpdateAgent",
        a_agent,
        lambda w, n: AS.UpdateAgentRequest(
            agent=agent_pb2.Agent(name=n, display_name="hijacked"), update_mask=mask("*")
        ),
    ),
    Denied(
        "DeleteAgent",
        "AgentService/DeleteAgent",
        a_agent,
        lambda w, n: AS.DeleteAgentRequest(name=n),
    ),
    Denied(
        "DeleteAgent-stolen-etag",
        "AgentService/DeleteAgent",
        a_agent,
        lambda w, n: AS.DeleteAgentRequest(name=n, etag=w.a.agent.etag),
    ),
    Denied(
        "ListAgentBlocks",
        "AgentService/ListAgentBlocks",
        a_agent,
        lambda w, n: AS.ListAgentBlocksRequest(agent=n),
    ),
    Denied(
        "GetAgentBlock",
        "AgentService/GetAgentBlock",
        a_agent,
        lambda w, n: AS.GetAgentBlockRequest(agent=n, label="human"),
    ),
    Denied(
        "UpdateAgentBlock",
        "AgentService/UpdateAgentBlock",
        a_agent,
        lambda w, n: AS.UpdateAgentBlockRequest(
            agent=n,
            label="human",
            block=block_pb2.Block(value="hijacked"),
            update_mask=mask("value"),
        ),
    ),
    Denied(
        "AttachBlock-their-agent-their-block",
        "AgentService/AttachBlock",
        a_agent,
        lambda w, n: AS.AttachBlockRequest(agent=n, block=w.a.block.name),
    ),
    Denied(
        "AttachBlock-their-agent-own-block",
        "AgentService/AttachBlock",
        a_agent,
        lambda w, n: AS.AttachBlockRequest(agent=n, block=w.b.block.name),
    ),
    Denied(
        "AttachBlock-own-agent-their-block",
        "AgentService/AttachBlock",
        a_block,
        lambda w, n: AS.AttachBlockRequest(agent=w.b.agent.name, block=n),
    ),
    Denied(
        "AttachBlock-own-agent-their-attached-block",
        "AgentService/AttachBlock",
        a_agent_block,
        lambda w, n: AS.AttachBlockRequest(agent=w.b.agent.name, block=n),
    ),
    Denied(
        "DetachBlock-their-agent",
        "AgentService/DetachBlock",
        a_agent,
        lambda w, n: AS.DetachBlockRequest(agent=n, block=w.a.agent_block.name),
    ),
    Denied(
        "DetachBlock-own-agent-their-block",
        "AgentService/DetachBlock",
        a_agent_block,
        lambda w, n: AS.DetachBlockRequest(agent=w.b.agent.name, block=n),
    ),
    Denied(
        "ListAgentTools",
        "AgentService/ListAgentTools",
        a_agent,
        lambda w, n: AS.ListAgentToolsRequest(agent=n),
    ),
    Denied(
        "AttachTool-their-agent-own-tool",
        "AgentService/AttachTool",
        a_agent,
        lambda w, n: AS.AttachToolRequest(agent=n, tool=w.b.tool.name),
    ),
    Denied(
        "AttachTool-own-agent-their-tool",
        "AgentService/AttachTool",
        a_tool,
        lambda w, n: AS.AttachToolRequest(agent=w.b.agent.name, tool=n),
    ),
    Denied(
        "DetachTool-their-agent",
        "AgentService/DetachTool",
        a_agent,
        lambda w, n: AS.DetachToolRequest(agent=n, tool=w.a.tool.name),
    ),
    Denied(
        "DetachTool-own-agent-their-tool",
        "AgentService/DetachTool",
        a_tool,
        lambda w, n: AS.DetachToolRequest(agent=w.b.agent.name, tool=n),
    ),
    Denied(
        "CreateAgent-their-block",
        "AgentService/CreateAgent",
        a_block,
        lambda w, n: new_agent(block_names=[n]),
    ),
    Denied(
        "CreateAgent-their-attached-block",
        "AgentService/CreateAgent",
        a_agent_block,
        lambda w, n: new_agent(block_names=[w.b.block.name, n]),
    ),
    Denied(
        "CreateAgent-their-tool",
        "AgentService/CreateAgent",
        a_tool,
        lambda w, n: new_agent(tool_names=[w.b.tool.name, n]),
    ),
    Denied(
        "CreateAgent-their-tool-by-name",
        "AgentService/CreateAgent",
        lambda w: w.a.tool.tool_name,
        lambda w, n: new_agent(tools_by_name=[n]),
    ),
    # The other direction: org A names org B's resources from its own agent.
    Denied(
        "A-AttachBlock-own-agent-their-block",
        "AgentService/AttachBlock",
        lambda w: w.b.block.name,
        lambda w, n: AS.AttachBlockRequest(agent=w.a.agent.name, block=n),
        actor="a",
    ),
    Denied(
        "A-DetachBlock-own-agent-their-block",
        "AgentService/DetachBlock",
        lambda w: w.b.agent_block.name,
        lambda w, n: AS.DetachBlockRequest(agent=w.a.agent.name, block=n),
        actor="a",
    ),
    Denied(
        "A-AttachTool-own-agent-their-tool",
        "AgentService/AttachTool",
        lambda w: w.b.tool.name,
        lambda w, n: AS.AttachToolRequest(agent=w.a.agent.name, tool=n),
        actor="a",
    ),
    Denied(
        "A-DetachTool-own-agent-their-tool",
        "AgentService/DetachTool",
        lambda w: w.b.tool.name,
        lambda w, n: AS.DetachToolRequest(agent=w.a.agent.name, tool=n),
        actor="a",
    ),
    Denied(
        "A-CreateAgent-their-block",
        "AgentService/CreateAgent",
        lambda w: w.b.block.name,
        lambda w, n: new_agent(block_names=[w.a.block.name, n]),
        actor="a",
    ),
    Denied(
        "A-CreateAgent-their-tool",
        "AgentService/CreateAgent",
        lambda w: w.b.tool.name,
        lambda w, n: new_agent(tool_names=[n]),
        actor="a",
    ),
    # BlockService.
    Denied("GetBlock", "BlockService/GetBlock", a_block, lambda w, n: BS.GetBlockRequest(name=n)),
    Denied(
        "GetBlock-attached",
        "BlockService/GetBlock",
        a_agent_block,
        lambda w, n: BS.GetBlockRequest(name=n),
    ),
    Denied(
        "UpdateBlock",
        "BlockService/UpdateBlock",
        a_block,
        lambda w, n: BS.UpdateBlockRequest(
            block=block_pb2.Block(name=n, value="hijacked"), update_mask=mask("value")
        ),
    ),
    Denied(
        "UpdateBlock-attached-relabel",
        "BlockService/UpdateBlock",
        a_agent_block,
        lambda w, n: BS.UpdateBlockRequest(
            block=block_pb2.Block(name=n, label="hijacked", etag=w.a.agent_block.etag),
            update_mask=mask("label"),
        ),
    ),
    Denied(
        "DeleteBlock",
        "BlockService/DeleteBlock",
        a_block,
        lambda w, n: BS.DeleteBlockRequest(name=n),
    ),
    Denied(
        "DeleteBlock-attached-force",
        "BlockService/DeleteBlock",
        a_agent_block,
        lambda w, n: BS.DeleteBlockRequest(name=n, force=True),
    ),
    # ToolService.
    Denied("GetTool", "ToolService/GetTool", a_tool, lambda w, n: TS.GetToolRequest(name=n)),
    Denied(
        "UpdateTool",
        "ToolService/UpdateTool",
        a_tool,
        lambda w, n: TS.UpdateToolRequest(
            tool=tool_pb2.Tool(name=n, description="hijacked"), update_mask=mask("description")
        ),
    ),
    Denied(
        "UpdateTool-source",
        "ToolService/UpdateTool",
        a_tool,
        lambda w, n: TS.UpdateToolRequest(
            tool=tool_pb2.Tool(name=n, source_code=tool_source("hijacked", "Hijacked.")),
            update_mask=mask("source_code"),
        ),
    ),
    Denied(
        "DeleteTool", "ToolService/DeleteTool", a_tool, lambda w, n: TS.DeleteToolRequest(name=n)
    ),
    Denied(
        "DeleteTool-stolen-etag",
        "ToolService/DeleteTool",
        a_tool,
        lambda w, n: TS.DeleteToolRequest(name=n, etag=w.a.tool.etag),
    ),
]


def status_shape(error: grpc.aio.AioRpcError, name: str) -> str:
    """The whole google.rpc.Status as JSON, with the id in ``name`` blanked out."""
    assert error.code() == grpc.StatusCode.NOT_FOUND, (error.code(), error.details())
    status = rich_status(error)
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert [(info.reason, info.domain) for info in infos] == [("NOT_FOUND", "engram.dev")], infos
    token = name.rpartition("/")[2]
    text = json.dumps(json_format.MessageToDict(status), sort_keys=True)
    return text.replace(token, "<id>")


@on_shared_loop
@pytest.mark.parametrize("case", DENIED, ids=[case.case_id for case in DENIED])
async def test_foreign_name_is_not_found_like_a_missing_one(world: World, case: Denied) -> None:
    actor = world.tenant(case.actor)
    owner = world.other(case.actor)
    foreign = case.target(world)
    missing = missing_like(foreign)
    before = await asyncio.gather(snapshot(owner), snapshot(actor))

    with pytest.raises(grpc.aio.AioRpcError) as foreign_call:
        await call(actor.client, case.rpc, case.request(world, foreign))
    with pytest.raises(grpc.aio.AioRpcError) as missing_call:
        await call(actor.client, case.rpc, case.request(world, missing))

    foreign_shape = status_shape(foreign_call.value, foreign)
    missing_shape = status_shape(missing_call.value, missing)
    assert foreign_shape == missing_shape
    after = await asyncio.gather(snapshot(owner), snapshot(actor))
    assert_unchanged(before[0], after[0], "owner")
    assert_unchanged(before[1], after[1], "caller")


# --- creates that carry the other org's identity ------------------------------------------


@dataclass(frozen=True)
class OwnCopy:
    """A create by org B carrying something of org A's; it must create B's own resource."""

    case_id: str
    rpc: str
    request: Callable[[World], Message]
    get_rpc: str
    get_request: Callable[[str], Message]
    collection: str


def get_agent(name: str) -> Message:
    return AS.GetAgentRequest(name=name)


def get_block(name: str) -> Message:
    return BS.GetBlockRequest(name=name)


def get_tool(name: str) -> Message:
    return TS.GetToolRequest(name=name)


OWN_COPIES = [
    OwnCopy(
        "CreateAgent-their-request-id",
        "AgentService/CreateAgent",
        lambda w: AS.CreateAgentRequest(
            agent=agent_pb2.Agent(display_name="beta second"),
            include_base_tools=False,
            request_id=w.a.agent_request_id,
        ),
        "AgentService/GetAgent",
        get_agent,
        "agents",
    ),
    OwnCopy(
        "CreateAgent-their-agent-name",
        "AgentService/CreateAgent",
        lambda w: AS.CreateAgentRequest(
            agent=agent_pb2.Agent(name=w.a.agent.name, id=w.a.agent.id, display_name="beta second"),
            memory_blocks=[block_pb2.Block(name=w.a.agent_block.name, label="human")],
            include_base_tools=False,
        ),
        "AgentService/GetAgent",
        get_agent,
        "agents",
    ),
    OwnCopy(
        "CreateBlock-their-request-id",
        "BlockService/CreateBlock",
        lambda w: BS.CreateBlockRequest(
            block=block_pb2.Block(label="notes", value="beta again"),
            request_id=w.a.block_request_id,
        ),
        "BlockService/GetBlock",
        get_block,
        "blocks",
    ),
    OwnCopy(
        "CreateBlock-their-block-name",
        "BlockService/CreateBlock",
        lambda w: BS.CreateBlockRequest(
            block=block_pb2.Block(name=w.a.block.name, id=w.a.block.id, label="notes", value="b")
        ),
        "BlockService/GetBlock",
        get_block,
        "blocks",
    ),
    OwnCopy(
        "CreateTool-their-request-id",
        "ToolService/CreateTool",
        lambda w: TS.CreateToolRequest(
            tool=tool_pb2.Tool(source_code=tool_source("track_parcel", "Beta tracking.")),
            request_id=w.a.tool_request_id,
        ),
        "ToolService/GetTool",
        get_tool,
        "tools",
    ),
    OwnCopy(
        "CreateTool-their-tool-name-and-function",
        "ToolService/CreateTool",
        lambda w: TS.CreateToolRequest(
            tool=tool_pb2.Tool(
                name=w.a.tool.name,
                id=w.a.tool.id,
                source_code=tool_source(w.a.tool.tool_name, "Beta's own lookup."),
            )
        ),
        "ToolService/GetTool",
        get_tool,
        "tools",
    ),
    OwnCopy(
        "UpsertTool-their-function",
        "ToolService/UpsertTool",
        lambda w: TS.UpsertToolRequest(
            tool=tool_pb2.Tool(source_code=tool_source(w.a.tool.tool_name, "Beta's upsert."))
        ),
        "ToolService/GetTool",
        get_tool,
        "tools",
    ),
    OwnCopy(
        "UpsertTool-their-tool-name",
        "ToolService/UpsertTool",
        lambda w: TS.UpsertToolRequest(
            tool=tool_pb2.Tool(
                name=w.a.tool.name, source_code=tool_source(w.a.tool.tool_name, "Beta's upsert.")
            )
        ),
        "ToolService/GetTool",
        get_tool,
        "tools",
    ),
]


@on_shared_loop
@pytest.mark.parametrize("case", OWN_COPIES, ids=[case.case_id for case in OWN_COPIES])
async def test_create_with_foreign_identity_creates_own_resource(
    world: World, case: OwnCopy
) -> None:
    before_a = await snapshot(world.a)
    created = await call(world.b.client, case.rpc, case.request(world))

    a_names = {
        "agents": {world.a.agent.name},
        "blocks": {world.a.block.name, world.a.agent_block.name},
        "tools": {world.a.tool.name},
    }[case.collection]
    b_names = {
        "agents": {world.b.agent.name},
        "blocks": {world.b.block.name, world.b.agent_block.name},
        "tools": {world.b.tool.name},
    }[case.collection]
    assert created.name.startswith(f"{case.collection}/")
    assert created.name not in a_names | b_names
    # Org B reads it; org A cannot see it.
    assert (await call(world.b.client, case.get_rpc, case.get_request(created.name))) == created
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(world.a.client, case.get_rpc, case.get_request(created.name))
    status_shape(caught.value, created.name)
    if isinstance(created, agent_pb2.Agent):
        # Inline blocks are new blocks of org B too.
        assert not set(created.blocks) & a_names
        assert created.display_name == "beta second"
    assert_unchanged(before_a, await snapshot(world.a), "A")


@on_shared_loop
async def test_base_tools_are_each_organizations_own(world: World) -> None:
    """Built-in tools are registered per organization; an org never links the other's."""
    request = AS.CreateAgentRequest(agent=agent_pb2.Agent(display_name="with base tools"))
    a_agent = await world.a.client.agents.CreateAgent(request)
    before_a = await snapshot(world.a)
    b_agent = await world.b.client.agents.CreateAgent(request)

    assert a_agent.tools and len(b_agent.tools) == len(a_agent.tools)
    assert not set(a_agent.tools) & set(b_agent.tools)
    a_tools = await world.a.client.agents.ListAgentTools(
        AS.ListAgentToolsRequest(agent=a_agent.name)
    )
    b_tools = await world.b.client.agents.ListAgentTools(
        AS.ListAgentToolsRequest(agent=b_agent.name)
    )
    assert [tool.tool_name for tool in b_tools.tools] == [tool.tool_name for tool in a_tools.tools]
    # A base tool asked for by its function name resolves in the caller's org too.
    by_name = await world.b.client.agents.CreateAgent(
        AS.CreateAgentRequest(
            agent=agent_pb2.Agent(display_name="base tool by name"),
            tools_by_name=[a_tools.tools[0].tool_name],
            include_base_tools=False,
        )
    )
    assert list(by_name.tools) == [b_tools.tools[0].name]
    for name in b_agent.tools:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await world.a.client.tools.GetTool(TS.GetToolRequest(name=name))
        status_shape(caught.value, name)
    assert_unchanged(before_a, await snapshot(world.a), "A")


# --- lists and counts -----------------------------------------------------------------


async def walk(list_call: Callable[[str], Awaitable[Any]], field: str) -> list[str]:
    """Every name on every page, one item per page."""
    names: list[str] = []
    token = ""
    for _ in range(50):
        page = await list_call(token)
        names.extend(item.name for item in getattr(page, field))
        token = page.next_page_token
        if not token:
            return names
    raise AssertionError("paging did not end")


@dataclass(frozen=True)
class Listing:
    """What ``viewer`` observes through a list RPC, and what it should observe."""

    case_id: str
    rpc: str
    observe: Callable[[Tenant, Tenant], Awaitable[object]]
    expected: Callable[[Tenant], object]


async def _list_agents(viewer: Tenant, other: Tenant) -> object:
    page = await viewer.client.agents.ListAgents(AS.ListAgentsRequest(page_size=1000))
    return sorted(agent.name for agent in page.agents)


async def _list_agents_by_their_display_name(viewer: Tenant, other: Tenant) -> object:
    page = await viewer.client.agents.ListAgents(
        AS.ListAgentsRequest(display_name=other.display_name)
    )
    return [agent.name for agent in page.agents]


async def _list_agents_by_their_tag(viewer: Tenant, other: Tenant) -> object:
    names = []
    for match_all in (False, True):
        page = await viewer.client.agents.ListAgents(
            AS.ListAgentsRequest(tags=[other.agent_tag], match_all_tags=match_all)
        )
        names.extend(agent.name for agent in page.agents)
    return names


async def _list_agents_paged(viewer: Tenant, other: Tenant) -> object:
    return await walk(
        lambda token: viewer.client.agents.ListAgents(
            AS.ListAgentsRequest(page_size=1, page_token=token)
        ),
        "agents",
    )


async def _count_agents(viewer: Tenant, other: Tenant) -> object:
    return (await viewer.client.agents.CountAgents(AS.CountAgentsRequest())).count


async def _count_agents_by_their_filters(viewer: Tenant, other: Tenant) -> object:
    counts = []
    for request in (
        AS.CountAgentsRequest(display_name=other.display_name),
        AS.CountAgentsRequest(tags=[other.agent_tag]),
        AS.CountAgentsRequest(tags=[other.agent_tag], match_all_tags=True),
    ):
        counts.append((await viewer.client.agents.CountAgents(request)).count)
    return counts


async def _list_blocks(viewer: Tenant, other: Tenant) -> object:
    page = await viewer.client.blocks.ListBlocks(BS.ListBlocksRequest(page_size=1000))
    return sorted(block.name for block in page.blocks)


async def _list_blocks_by_shared_label(viewer: Tenant, other: Tenant) -> object:
    page = await viewer.client.blocks.ListBlocks(BS.ListBlocksRequest(label="human"))
    return [block.name for block in page.blocks]


async def _list_blocks_paged(viewer: Tenant, other: Tenant) -> object:
    return sorted(
        await walk(
            lambda token: viewer.client.blocks.ListBlocks(
                BS.ListBlocksRequest(page_size=1, page_token=token)
            ),
            "blocks",
        )
    )


async def _list_blocks_with_their_page_token(viewer: Tenant, other: Tenant) -> object:
    """The other org's page token either is refused or pages through the viewer's own blocks."""
    their_page = await other.client.blocks.ListBlocks(BS.ListBlocksRequest(page_size=1))
    assert their_page.next_page_token
    request = BS.ListBlocksRequest(page_size=1000, page_token=their_page.next_page_token)
    try:
        page = await viewer.client.blocks.ListBlocks(request)
    except grpc.aio.AioRpcError as error:
        refused = error.code() == grpc.StatusCode.INVALID_ARGUMENT
        return [] if refused else [f"{error.code().name}: {error.details()}"]
    mine = {viewer.block.name, viewer.agent_block.name}
    return [block.name for block in page.blocks if block.name not in mine]


async def _list_tools(viewer: Tenant, other: Tenant) -> object:
    page = await viewer.client.tools.ListTools(TS.ListToolsRequest(page_size=1000))
    return sorted(tool.name for tool in page.tools)


async def _list_tools_by_their_name_and_tag(viewer: Tenant, other: Tenant) -> object:
    names = []
    for request in (
        TS.ListToolsRequest(tool_name=other.tool.tool_name),
        TS.ListToolsRequest(tags=[other.tool_tag]),
    ):
        page = await viewer.client.tools.ListTools(request)
        names.extend(tool.name for tool in page.tools)
    return names


async def _list_tools_paged(viewer: Tenant, other: Tenant) -> object:
    return await walk(
        lambda token: viewer.client.tools.ListTools(
            TS.ListToolsRequest(page_size=1, page_token=token)
        ),
        "tools",
    )


async def _list_own_agent_blocks_and_tools(viewer: Tenant, other: Tenant) -> object:
    blocks = await viewer.client.agents.ListAgentBlocks(
        AS.ListAgentBlocksRequest(agent=viewer.agent.name)
    )
    tools = await viewer.client.agents.ListAgentTools(
        AS.ListAgentToolsRequest(agent=viewer.agent.name)
    )
    return [block.name for block in blocks.blocks] + [tool.name for tool in tools.tools]


LISTINGS = [
    Listing("ListAgents", "AgentService/ListAgents", _list_agents, lambda v: [v.agent.name]),
    Listing(
        "ListAgents-their-display-name",
        "AgentService/ListAgents",
        _list_agents_by_their_display_name,
        lambda v: [],
    ),
    Listing(
        "ListAgents-their-tag", "AgentService/ListAgents", _list_agents_by_their_tag, lambda v: []
    ),
    Listing(
        "ListAgents-paged", "AgentService/ListAgents", _list_agents_paged, lambda v: [v.agent.name]
    ),
    Listing("CountAgents", "AgentService/CountAgents", _count_agents, lambda v: 1),
    Listing(
        "CountAgents-their-filters",
        "AgentService/CountAgents",
        _count_agents_by_their_filters,
        lambda v: [0, 0, 0],
    ),
    Listing(
        "ListBlocks",
        "BlockService/ListBlocks",
        _list_blocks,
        lambda v: sorted([v.block.name, v.agent_block.name]),
    ),
    Listing(
        "ListBlocks-shared-label",
        "BlockService/ListBlocks",
        _list_blocks_by_shared_label,
        lambda v: [v.agent_block.name],
    ),
    Listing(
        "ListBlocks-paged",
        "BlockService/ListBlocks",
        _list_blocks_paged,
        lambda v: sorted([v.block.name, v.agent_block.name]),
    ),
    Listing(
        "ListBlocks-their-page-token",
        "BlockService/ListBlocks",
        _list_blocks_with_their_page_token,
        lambda v: [],
    ),
    Listing("ListTools", "ToolService/ListTools", _list_tools, lambda v: [v.tool.name]),
    Listing(
        "ListTools-their-name-and-tag",
        "ToolService/ListTools",
        _list_tools_by_their_name_and_tag,
        lambda v: [],
    ),
    Listing("ListTools-paged", "ToolService/ListTools", _list_tools_paged, lambda v: [v.tool.name]),
    Listing(
        "ListAgentBlocks-and-tools-own-agent",
        "AgentService/ListAgentBlocks",
        _list_own_agent_blocks_and_tools,
        lambda v: [v.agent_block.name, v.tool.name],
    ),
]


@on_shared_loop
@pytest.mark.parametrize("case", LISTINGS, ids=[case.case_id for case in LISTINGS])
async def test_lists_show_only_own_resources(world: World, case: Listing) -> None:
    """Each org, as the viewer, sees exactly its own resources (org B first, then org A)."""
    for viewer in ("b", "a"):
        me, other = world.tenant(viewer), world.other(viewer)
        assert (viewer, await case.observe(me, other)) == (viewer, case.expected(me))


# --- coverage -------------------------------------------------------------------------


def takes_resource_name(method: MethodDescriptor) -> bool:
    """Whether the request names a resource: a resource reference, or a resource message."""
    for field in method.input_type.fields:
        if field.GetOptions().HasExtension(resource_pb2.resource_reference):
            return True
        if field.message_type is not None and field.message_type.GetOptions().HasExtension(
            resource_pb2.resource
        ):
            return True
    return False


def all_methods() -> dict[str, MethodDescriptor]:
    return {
        f"{service}/{method.name}": method
        for service, module in SERVICE_MODULES.items()
        for method in module.DESCRIPTOR.services_by_name[service].methods
    }


def test_matrix_covers_every_rpc_that_takes_a_name() -> None:
    methods = all_methods()
    named = {rpc for rpc, method in methods.items() if takes_resource_name(method)}
    # The detection itself works: these obviously take names.
    assert {"AgentService/GetAgent", "AgentService/AttachTool", "BlockService/UpdateBlock"} <= named
    matrix = {case.rpc for case in DENIED} | {case.rpc for case in OWN_COPIES}
    listed = {case.rpc for case in LISTINGS}
    unknown = (matrix | listed | LIST_RPCS) - set(methods)
    assert not unknown, f"cases name RPCs the services do not have: {sorted(unknown)}"
    assert not named - matrix, (
        f"RPCs taking a name without an isolation case: {sorted(named - matrix)}"
    )
    assert not set(methods) - matrix - LIST_RPCS, sorted(set(methods) - matrix - LIST_RPCS)
    assert listed >= LIST_RPCS, sorted(LIST_RPCS - listed)
    # Every RPC reading an existing resource by name is denied across orgs, not only created.
    readers = named - {rpc for rpc in named if rpc.split("/")[1].startswith(("Create", "Upsert"))}
    assert not readers - {case.rpc for case in DENIED}, sorted(readers - {c.rpc for c in DENIED})
