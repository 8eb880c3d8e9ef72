"""AgentService through the real server: every RPC, its error statuses and its edge cases.

Each test talks to a server started on port 0 over a migrated database (SQLite
and PostgreSQL), through the generated stubs, exactly as a client would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2, status_pb2

from engram.rpc.errors import reason_of, unpack_detail
from engram.v1 import (
    agent_pb2,
    agent_service_pb2,
    block_pb2,
    block_service_pb2,
    tool_pb2,
    tool_rule_pb2,
    tool_service_pb2,
)
from support.api import ApiHarness, Client, rich_status

NATIVE_BASE_TOOLS = [
    "archival_memory_insert",
    "archival_memory_search",
    "conversation_search",
    "memory_insert",
    "memory_replace",
]
HEARTBEAT_BASE_TOOLS = [*NATIVE_BASE_TOOLS, "send_message"]
AGENT_ID = re.compile(r"agent-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
DEFAULT_BLOCK_LIMIT = 100_000

TOOL_SOURCE = '''
def {name}(text: str) -> str:
    """Repeat the text back.

    Args:
        text: The text to repeat.

    Returns:
        The same text.
    """
    return text
'''


# --- helpers ------------------------------------------------------------------------------


def missing_agent() -> str:
    return f"agents/agent-{uuid.uuid4()}"


def missing_block() -> str:
    return f"blocks/block-{uuid.uuid4()}"


def missing_tool() -> str:
    return f"tools/tool-{uuid.uuid4()}"


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def rule(**kind: Any) -> tool_rule_pb2.ToolRule:
    """A ToolRule from its JSON form, e.g. ``rule(init={"tool_name": "x"})``."""
    return json_format.ParseDict(kind, tool_rule_pb2.ToolRule())


async def create_agent(
    client: Client,
    agent: agent_pb2.Agent | None = None,
    *,
    base_tools: bool = False,
    memory_blocks: Sequence[block_pb2.Block] = (),
    block_names: Sequence[str] = (),
    tool_names: Sequence[str] = (),
    tools_by_name: Sequence[str] = (),
    request_id: str = "",
) -> agent_pb2.Agent:
    created: agent_pb2.Agent = await client.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent or agent_pb2.Agent(),
            memory_blocks=list(memory_blocks),
            block_names=list(block_names),
            tool_names=list(tool_names),
            tools_by_name=list(tools_by_name),
            include_base_tools=base_tools,
            request_id=request_id,
        )
    )
    return created


async def create_block(
    client: Client, label: str, value: str = "", limit: int = 0
) -> block_pb2.Block:
    block: block_pb2.Block = await client.blocks.CreateBlock(
        block_service_pb2.CreateBlockRequest(
            block=block_pb2.Block(label=label, value=value, limit=limit)
        )
    )
    return block


async def create_tool(client: Client, function_name: str) -> tool_pb2.Tool:
    tool: tool_pb2.Tool = await client.tools.CreateTool(
        tool_service_pb2.CreateToolRequest(
            tool=tool_pb2.Tool(source_code=TOOL_SOURCE.format(name=function_name))
        )
    )
    return tool


async def get_agent(client: Client, name: str) -> agent_pb2.Agent:
    agent: agent_pb2.Agent = await client.agents.GetAgent(
        agent_service_pb2.GetAgentRequest(name=name)
    )
    return agent


async def count_agents(client: Client, **filters: Any) -> int:
    response = await client.agents.CountAgents(agent_service_pb2.CountAgentsRequest(**filters))
    return int(response.count)


async def list_agent_ids(client: Client, **filters: Any) -> list[str]:
    """Every agent matching ``filters``, across all pages."""
    ids: list[str] = []
    token = ""
    while True:
        response = await client.agents.ListAgents(
            agent_service_pb2.ListAgentsRequest(page_token=token, **filters)
        )
        ids.extend(agent.id for agent in response.agents)
        token = response.next_page_token
        if not token:
            return ids


async def agent_tool_names(client: Client, agent: str) -> list[str]:
    response = await client.agents.ListAgentTools(
        agent_service_pb2.ListAgentToolsRequest(agent=agent, page_size=1000)
    )
    return [tool.tool_name for tool in response.tools]


async def agent_block_labels(client: Client, agent: str) -> list[str]:
    response = await client.agents.ListAgentBlocks(
        agent_service_pb2.ListAgentBlocksRequest(agent=agent, page_size=1000)
    )
    return [block.label for block in response.blocks]


async def failure(call: Awaitable[Any], code: grpc.StatusCode, reason: str) -> status_pb2.Status:
    """Await a call that must fail with ``code`` and an engram.dev ErrorInfo of ``reason``."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() is not grpc.StatusCode.INTERNAL, error.details()
    assert error.code() is code, f"{error.code()}: {error.details()}"
    status = rich_status(error)
    assert status.code == code.value[0]
    info = unpack_detail(status, error_details_pb2.ErrorInfo)
    assert info is not None, "the status carries no ErrorInfo"
    assert info.domain == "engram.dev"
    assert reason_of(status) == reason, status
    return status


def field_violations(status: status_pb2.Status) -> dict[str, str]:
    bad_request = unpack_detail(status, error_details_pb2.BadRequest)
    assert bad_request is not None, "the status carries no BadRequest"
    return {violation.field: violation.description for violation in bad_request.field_violations}


async def invalid(
    call: Awaitable[Any], field: str, *, reason: str = "INVALID_ARGUMENT"
) -> dict[str, str]:
    """Await a call that must be INVALID_ARGUMENT with a BadRequest violation on ``field``."""
    status = await failure(call, grpc.StatusCode.INVALID_ARGUMENT, reason)
    violations = field_violations(status)
    assert field in violations, violations
    assert violations[field]
    return violations


async def not_found(call: Awaitable[Any], resource: str, resource_id: str) -> None:
    status = await failure(call, grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    info = unpack_detail(status, error_details_pb2.ErrorInfo)
    assert info is not None
    assert dict(info.metadata) == {"resource": resource, "id": resource_id}


def id_of(name: str) -> str:
    return name.partition("/")[2]


def forged_token(position: list[Any], filters: dict[str, Any]) -> str:
    """A page token with the right filter fingerprint but a position of the caller's choosing.

    Built the way the server builds its own (base64url JSON), to check that an
    altered token is refused as a client error, never a server fault.
    """
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str)
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    payload = json.dumps({"a": position, "f": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


# --- CreateAgent ---------------------------------------------------------------------------


async def test_create_agent_defaults_to_native_with_base_tools(api: ApiHarness) -> None:
    created = await api.org_a.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(agent=agent_pb2.Agent())
    )

    assert AGENT_ID.fullmatch(created.id)
    assert created.name == f"agents/{created.id}"
    assert created.agent_type == agent_pb2.AGENT_TYPE_NATIVE
    assert created.display_name.startswith("agent-")  # generated when empty
    assert "plain text" in created.system
    assert created.etag
    assert created.HasField("create_time") and created.HasField("update_time")
    assert list(created.blocks) == []
    assert await agent_tool_names(api.org_a, created.name) == NATIVE_BASE_TOOLS
    assert len(created.tools) == len(NATIVE_BASE_TOOLS)
    assert await get_agent(api.org_a, created.name) == created


async def test_create_agent_base_tools_follow_the_agent_type(api: ApiHarness) -> None:
    created = await create_agent(
        api.org_a,
        agent_pb2.Agent(display_name="beat", agent_type=agent_pb2.AGENT_TYPE_HEARTBEAT),
        base_tools=True,
    )

    assert created.agent_type == agent_pb2.AGENT_TYPE_HEARTBEAT
    assert "send_message" in created.system
    assert await agent_tool_names(api.org_a, created.name) == HEARTBEAT_BASE_TOOLS
    tools = await api.org_a.agents.ListAgentTools(
        agent_service_pb2.ListAgentToolsRequest(agent=created.name)
    )
    kinds = {tool.tool_name: tool.tool_type for tool in tools.tools}
    assert kinds["send_message"] == tool_pb2.TOOL_TYPE_CORE
    assert kinds["memory_insert"] == tool_pb2.TOOL_TYPE_MEMORY

    bare = await create_agent(api.org_a, agent_pb2.Agent(display_name="bare"), base_tools=False)
    assert list(bare.tools) == []
    assert await agent_tool_names(api.org_a, bare.name) == []


async def test_base_tools_are_registered_once_per_organization(api: ApiHarness) -> None:
    first = await create_agent(api.org_a, base_tools=True)
    second = await create_agent(api.org_a, base_tools=True)
    heartbeat = await create_agent(
        api.org_a, agent_pb2.Agent(agent_type=agent_pb2.AGENT_TYPE_HEARTBEAT), base_tools=True
    )
    other_org = await create_agent(api.org_b, base_tools=True)

    assert list(first.tools) == list(second.tools)
    assert set(first.tools) < set(heartbeat.tools)
    assert not set(first.tools) & set(other_org.tools)
    listed = await api.org_a.tools.ListTools(
        tool_service_pb2.ListToolsRequest(tool_name="memory_insert")
    )
    assert len(listed.tools) == 1


async def test_create_agent_round_trips_every_field(api: ApiHarness) -> None:
    rules = [
        rule(init={"tool_name": "memory_insert", "prefilled_args": {"label": "human"}}),
        rule(terminal={"tool_name": "send_message"}),
        rule(continue_loop={"tool_name": "conversation_search"}),
        rule(
            child={
                "tool_name": "conversation_search",
                "children": ["memory_insert", "memory_replace"],
                "child_args": {"memory_insert": {"label": "notes"}},
            }
        ),
        rule(parent={"tool_name": "memory_insert", "children": ["memory_replace"]}),
        rule(
            conditional={
                "tool_name": "conversation_search",
                "child_output_mapping": {"true": "memory_insert"},
                "default_child": "send_message",
                "require_output_mapping": True,
            }
        ),
        rule(max_count_per_step={"tool_name": "memory_replace", "max_count_limit": 2}),
        rule(required_before_exit={"tool_name": "memory_insert"}),
        rule(requires_approval={"tool_name": "memory_replace"}),
    ]
    agent = agent_pb2.Agent(
        display_name="Ada's helper_1",
        description="helps Ada",
        system="You are terse.",
        agent_type=agent_pb2.AGENT_TYPE_HEARTBEAT,
        model="openai/gpt-4o-mini",
        model_settings=agent_pb2.ModelSettings(
            temperature=0.5,
            max_output_tokens=512,
            parallel_tool_calls=False,
            reasoning_effort="high",
        ),
        embedding="openai/text-embedding-3-small",
        context_window_limit=8000,
        tags=["beta", "alpha", "beta"],
        metadata=struct({"team": "core", "limits": {"daily": 3}, "flags": [True, "x"]}),
        tool_rules=rules,
        message_buffer_autoclear=True,
        # Output-only fields a client might send back are ignored.
        name=missing_agent(),
        id="agent-ignored",
    )

    created = await create_agent(api.org_a, agent)

    assert created.id != "agent-ignored"
    assert created.name == f"agents/{created.id}"
    assert created.display_name == "Ada's helper_1"
    assert created.description == "helps Ada"
    assert created.system == "You are terse."
    assert created.agent_type == agent_pb2.AGENT_TYPE_HEARTBEAT
    assert created.model == "openai/gpt-4o-mini"
    settings = created.model_settings
    assert settings.temperature == 0.5
    assert settings.max_output_tokens == 512
    assert settings.HasField("parallel_tool_calls") and settings.parallel_tool_calls is False
    assert settings.reasoning_effort == "high"
    assert created.embedding == "openai/text-embedding-3-small"
    assert created.context_window_limit == 8000
    assert list(created.tags) == ["alpha", "beta"]
    assert json_format.MessageToDict(created.metadata) == {
        "team": "core",
        "limits": {"daily": 3.0},
        "flags": [True, "x"],
    }
    assert list(created.tool_rules) == rules
    assert created.message_buffer_autoclear is True
    assert await get_agent(api.org_a, created.name) == created

    # Settings left unset stay unset; a zero temperature is a value, not "unset".
    sparse = await create_agent(
        api.org_a,
        agent_pb2.Agent(model_settings=agent_pb2.ModelSettings(temperature=0.0)),
    )
    assert sparse.model_settings.HasField("temperature")
    assert sparse.model_settings.temperature == 0.0
    assert not sparse.model_settings.HasField("max_output_tokens")
    assert not sparse.model_settings.HasField("parallel_tool_calls")
    assert sparse.model_settings.reasoning_effort == ""
    assert sparse.model == "" and sparse.embedding == "" and sparse.context_window_limit == 0


async def test_create_agent_with_inline_memory_blocks(api: ApiHarness) -> None:
    created = await create_agent(
        api.org_a,
        agent_pb2.Agent(display_name="memo"),
        memory_blocks=[
            block_pb2.Block(label="persona", value="I am helpful.", limit=50, read_only=True),
            block_pb2.Block(
                label="human",
                value="Name: Ada",
                description="facts about the user",
                metadata=struct({"source": "signup"}),
            ),
        ],
    )

    blocks = await api.org_a.agents.ListAgentBlocks(
        agent_service_pb2.ListAgentBlocksRequest(agent=created.name)
    )
    assert [block.label for block in blocks.blocks] == ["human", "persona"]
    assert list(created.blocks) == [block.name for block in blocks.blocks]
    human, persona = blocks.blocks
    assert human.value == "Name: Ada"
    assert human.limit == DEFAULT_BLOCK_LIMIT
    assert human.description == "facts about the user"
    assert json_format.MessageToDict(human.metadata) == {"source": "signup"}
    assert human.read_only is False
    assert persona.value == "I am helpful."
    assert persona.limit == 50
    assert persona.read_only is True
    assert list(human.agents) == [created.name] == list(persona.agents)
    standalone = await api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=human.name))
    assert standalone == human


async def test_create_agent_attaches_existing_blocks_and_tools(api: ApiHarness) -> None:
    shared = await create_block(api.org_a, "shared", "team notes")
    echo = await create_tool(api.org_a, "echo")
    shout = await create_tool(api.org_a, "shout")

    created = await create_agent(
        api.org_a,
        memory_blocks=[block_pb2.Block(label="human")],
        block_names=[shared.name],
        tool_names=[echo.name, shout.name],
        # The same tool by id and by name, and a base tool by name: each attached once.
        tools_by_name=["shout", "memory_insert"],
        base_tools=True,
    )

    assert await agent_block_labels(api.org_a, created.name) == ["human", "shared"]
    assert shared.name in created.blocks
    assert await agent_tool_names(api.org_a, created.name) == sorted(
        ["echo", "shout", *NATIVE_BASE_TOOLS]
    )
    assert len(created.tools) == len(set(created.tools)) == 2 + len(NATIVE_BASE_TOOLS)
    block = await api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=shared.name))
    assert list(block.agents) == [created.name]

    by_name_only = await create_agent(api.org_a, tools_by_name=["echo"])
    assert list(by_name_only.tools) == [echo.name]


async def test_create_agent_attaches_base_tools_by_name_in_a_fresh_organization(
    api: ApiHarness,
) -> None:
    # No agent has registered the base tools yet; asking for one by name still finds it.
    created = await create_agent(
        api.org_a, tools_by_name=["send_message", "memory_rethink"], base_tools=False
    )

    assert await agent_tool_names(api.org_a, created.name) == ["memory_rethink", "send_message"]
    tools = await api.org_a.agents.ListAgentTools(
        agent_service_pb2.ListAgentToolsRequest(agent=created.name)
    )
    assert [tool.tool_type for tool in tools.tools] == [
        tool_pb2.TOOL_TYPE_MEMORY,
        tool_pb2.TOOL_TYPE_CORE,
    ]
    # Later agents get the same registered tools, not copies.
    later = await create_agent(
        api.org_a,
        agent_pb2.Agent(agent_type=agent_pb2.AGENT_TYPE_HEARTBEAT),
        tools_by_name=["memory_rethink"],
        base_tools=True,
    )
    assert set(created.tools) < set(later.tools)
    listed = await api.org_a.tools.ListTools(tool_service_pb2.ListToolsRequest(page_size=100))
    assert sorted(tool.tool_name for tool in listed.tools) == sorted(
        ["memory_rethink", *HEARTBEAT_BASE_TOOLS]
    )


async def test_concurrent_first_agents_share_the_base_tools(api: ApiHarness) -> None:
    agents = await asyncio.gather(
        *(
            create_agent(api.org_a, agent_pb2.Agent(display_name=f"racer {index}"), base_tools=True)
            for index in range(4)
        )
    )

    assert len({agent.id for agent in agents}) == 4
    assert len({tuple(agent.tools) for agent in agents}) == 1
    assert await count_agents(api.org_a) == 4
    listed = await api.org_a.tools.ListTools(tool_service_pb2.ListToolsRequest(page_size=100))
    assert sorted(tool.tool_name for tool in listed.tools) == NATIVE_BASE_TOOLS


async def test_create_agent_rejects_duplicate_block_labels(api: ApiHarness) -> None:
    existing = await create_block(api.org_a, "human")
    other = await create_block(api.org_a, "notes")

    await invalid(
        create_agent(
            api.org_a,
            memory_blocks=[block_pb2.Block(label="human"), block_pb2.Block(label="human")],
        ),
        "memory_blocks[1].label",
    )
    await invalid(
        create_agent(
            api.org_a, memory_blocks=[block_pb2.Block(label="human")], block_names=[existing.name]
        ),
        "block_names[0]",
    )
    await invalid(
        create_agent(api.org_a, block_names=[other.name, existing.name, existing.name]),
        "block_names[2]",
    )

    # All or nothing: no agent, and no inline block left behind.
    assert await count_agents(api.org_a) == 0
    blocks = await api.org_a.blocks.ListBlocks(block_service_pb2.ListBlocksRequest())
    assert sorted(block.name for block in blocks.blocks) == sorted([existing.name, other.name])


async def test_create_agent_rejects_invalid_fields(api: ApiHarness) -> None:
    cases: list[tuple[agent_pb2.Agent, str]] = [
        (agent_pb2.Agent(display_name="no/slashes"), "agent.display_name"),
        (agent_pb2.Agent(display_name="x" * 201), "agent.display_name"),
        (agent_pb2.Agent(model="gpt-4o"), "agent.model"),
        (agent_pb2.Agent(embedding="openai/ spaced"), "agent.embedding"),
        (agent_pb2.Agent(context_window_limit=-1), "agent.context_window_limit"),
        (agent_pb2.Agent(tags=["ok", ""]), "agent.tags"),
        (agent_pb2.Agent(tags=["t" * 201]), "agent.tags"),
        (
            agent_pb2.Agent(model_settings=agent_pb2.ModelSettings(temperature=2.5)),
            "agent.model_settings.temperature",
        ),
        (
            agent_pb2.Agent(model_settings=agent_pb2.ModelSettings(max_output_tokens=0)),
            "agent.model_settings.max_output_tokens",
        ),
        (
            agent_pb2.Agent(model_settings=agent_pb2.ModelSettings(reasoning_effort="extreme")),
            "agent.model_settings.reasoning_effort",
        ),
        # Proto3 enums are open: a newer client may send a value this server does not know.
        (agent_pb2.Agent(agent_type=99), "agent.agent_type"),
    ]
    for agent, field in cases:
        await invalid(create_agent(api.org_a, agent), field)

    # Every violation is reported at once, not just the first.
    violations = await invalid(
        create_agent(api.org_a, agent_pb2.Agent(display_name="a/b", model="nohandle")),
        "agent.display_name",
    )
    assert "agent.model" in violations
    assert await count_agents(api.org_a) == 0


async def test_create_agent_rejects_invalid_memory_blocks(api: ApiHarness) -> None:
    cases: list[tuple[block_pb2.Block, str]] = [
        (block_pb2.Block(label="human", value="x" * 11, limit=10), "memory_blocks[0].value"),
        (block_pb2.Block(label=""), "memory_blocks[0].label"),
        (block_pb2.Block(label="   "), "memory_blocks[0].label"),
        (block_pb2.Block(label="l" * 201), "memory_blocks[0].label"),
        (block_pb2.Block(label="human", limit=-5), "memory_blocks[0].limit"),
        (
            block_pb2.Block(label="human", value="x" * (DEFAULT_BLOCK_LIMIT + 1)),
            "memory_blocks[0].value",
        ),
    ]
    for block, field in cases:
        await invalid(create_agent(api.org_a, memory_blocks=[block]), field)
    assert await count_agents(api.org_a) == 0

    exactly = await create_agent(
        api.org_a, memory_blocks=[block_pb2.Block(label="human", value="x" * 10, limit=10)]
    )
    block = await api.org_a.agents.GetAgentBlock(
        agent_service_pb2.GetAgentBlockRequest(agent=exactly.name, label="human")
    )
    assert block.value == "x" * 10


async def test_create_agent_rejects_invalid_tool_rules(api: ApiHarness) -> None:
    cases: list[tuple[list[tool_rule_pb2.ToolRule], str]] = [
        ([tool_rule_pb2.ToolRule()], "agent.tool_rules[0]"),
        ([rule(init={})], "agent.tool_rules[0].init.tool_name"),
        ([rule(terminal={"tool_name": "  "})], "agent.tool_rules[0].terminal.tool_name"),
        ([rule(child={"tool_name": "a"})], "agent.tool_rules[0].child.children"),
        ([rule(parent={"tool_name": "a"})], "agent.tool_rules[0].parent.children"),
        (
            [rule(child={"tool_name": "a", "children": ["b"], "child_args": {"c": {}}})],
            "agent.tool_rules[0].child.child_args",
        ),
        (
            [rule(conditional={"tool_name": "a"})],
            "agent.tool_rules[0].conditional.child_output_mapping",
        ),
        (
            [rule(max_count_per_step={"tool_name": "a"})],
            "agent.tool_rules[0].max_count_per_step.max_count_limit",
        ),
        (
            [
                rule(terminal={"tool_name": "a"}),
                rule(max_count_per_step={"tool_name": "a", "max_count_limit": -3}),
            ],
            "agent.tool_rules[1].max_count_per_step.max_count_limit",
        ),
        (
            [rule(init={"tool_name": "a"}), rule(init={"tool_name": "b"})],
            "agent.tool_rules",
        ),
    ]
    for rules, field in cases:
        await invalid(create_agent(api.org_a, agent_pb2.Agent(tool_rules=rules)), field)
    assert await count_agents(api.org_a) == 0


async def test_create_agent_with_unknown_references(api: ApiHarness) -> None:
    block_b = await create_block(api.org_b, "human")
    tool_b = await create_tool(api.org_b, "echo")
    gone_block, gone_tool = missing_block(), missing_tool()

    await not_found(create_agent(api.org_a, block_names=[gone_block]), "block", id_of(gone_block))
    await not_found(create_agent(api.org_a, tool_names=[gone_tool]), "tool", id_of(gone_tool))
    await not_found(create_agent(api.org_a, tools_by_name=["nope"]), "tool", "nope")
    # Another organization's block, tool and tool name are as good as missing.
    await not_found(
        create_agent(api.org_a, block_names=[block_b.name]), "block", id_of(block_b.name)
    )
    await not_found(create_agent(api.org_a, tool_names=[tool_b.name]), "tool", id_of(tool_b.name))
    await not_found(create_agent(api.org_a, tools_by_name=["echo"]), "tool", "echo")

    await invalid(create_agent(api.org_a, block_names=["human"]), "block_names[0]")
    await invalid(create_agent(api.org_a, block_names=[gone_block, "tools/x"]), "block_names[1]")
    await invalid(create_agent(api.org_a, tool_names=[gone_tool, block_b.name]), "tool_names[1]")
    assert await count_agents(api.org_a) == 0
    assert await count_agents(api.org_b) == 0


# --- idempotency -----------------------------------------------------------------------------


async def test_create_agent_retry_with_request_id_returns_the_first_agent(api: ApiHarness) -> None:
    request_id = str(uuid.uuid4())
    first = await create_agent(
        api.org_a,
        agent_pb2.Agent(display_name="first"),
        memory_blocks=[block_pb2.Block(label="human")],
        request_id=request_id,
    )
    retry = await create_agent(
        api.org_a,
        agent_pb2.Agent(display_name="first"),
        memory_blocks=[block_pb2.Block(label="human")],
        request_id=request_id,
    )
    changed = await create_agent(
        api.org_a, agent_pb2.Agent(display_name="second"), request_id=request_id
    )

    assert retry.id == first.id == changed.id
    assert changed.display_name == "first"
    assert list(retry.blocks) == list(first.blocks)
    assert await count_agents(api.org_a) == 1
    blocks = await api.org_a.blocks.ListBlocks(block_service_pb2.ListBlocksRequest())
    assert len(blocks.blocks) == 1

    # Another id creates another agent; the same id in another organization is independent.
    fresh = await create_agent(api.org_a, request_id=str(uuid.uuid4()))
    other_org = await create_agent(api.org_b, request_id=request_id)
    assert fresh.id != first.id
    assert other_org.id != first.id
    assert await count_agents(api.org_a) == 2
    assert await count_agents(api.org_b) == 1


async def test_request_id_must_be_a_uuid_and_failures_do_not_consume_it(api: ApiHarness) -> None:
    for malformed in ("not-a-uuid", "1234", str(uuid.uuid4())[:-1]):
        await invalid(create_agent(api.org_a, request_id=malformed), "request_id")
    assert await count_agents(api.org_a) == 0
    request_id = str(uuid.uuid4())

    await not_found(
        create_agent(api.org_a, tools_by_name=["missing"], request_id=request_id), "tool", "missing"
    )
    created = await create_agent(
        api.org_a, agent_pb2.Agent(display_name="ok"), request_id=request_id
    )

    assert created.display_name == "ok"
    assert await count_agents(api.org_a) == 1


async def test_concurrent_creates_with_one_request_id_make_one_agent(api: ApiHarness) -> None:
    request_id = str(uuid.uuid4())

    agents = await asyncio.gather(
        *(create_agent(api.org_a, request_id=request_id, base_tools=True) for _ in range(4))
    )

    assert len({agent.id for agent in agents}) == 1
    assert await count_agents(api.org_a) == 1


# --- GetAgent and resource names ---------------------------------------------------------


async def test_get_agent_of_missing_or_foreign_agent_is_not_found(api: ApiHarness) -> None:
    mine = await create_agent(api.org_a)
    gone = missing_agent()

    await not_found(get_agent(api.org_a, gone), "agent", id_of(gone))
    await not_found(get_agent(api.org_b, mine.name), "agent", mine.id)
    assert (await get_agent(api.org_a, mine.name)).id == mine.id


MALFORMED_AGENT_NAMES = [
    f"agent-{uuid.uuid4()}",
    "agents/",
    "agents/agent-123",
    f"agents/block-{uuid.uuid4()}",
    f"blocks/agent-{uuid.uuid4()}",
    f"agents/agent-{uuid.uuid4()}/extra",
    f"agents/agent-{str(uuid.uuid4()).upper()}",
    f"agents/agent-{uuid.uuid1()}",
]


async def test_malformed_agent_names_are_invalid_argument(api: ApiHarness) -> None:
    stub = api.org_a.agents
    block, tool = missing_block(), missing_tool()
    calls: list[tuple[str, Any]] = [
        ("name", lambda name: stub.GetAgent(agent_service_pb2.GetAgentRequest(name=name))),
        ("name", lambda name: stub.DeleteAgent(agent_service_pb2.DeleteAgentRequest(name=name))),
        (
            "agent.name",
            lambda name: stub.UpdateAgent(
                agent_service_pb2.UpdateAgentRequest(
                    agent=agent_pb2.Agent(name=name, description="x")
                )
            ),
        ),
        (
            "agent",
            lambda name: stub.ListAgentBlocks(agent_service_pb2.ListAgentBlocksRequest(agent=name)),
        ),
        (
            "agent",
            lambda name: stub.GetAgentBlock(
                agent_service_pb2.GetAgentBlockRequest(agent=name, label="human")
            ),
        ),
        (
            "agent",
            lambda name: stub.UpdateAgentBlock(
                agent_service_pb2.UpdateAgentBlockRequest(
                    agent=name, label="human", block=block_pb2.Block(value="v")
                )
            ),
        ),
        (
            "agent",
            lambda name: stub.AttachBlock(
                agent_service_pb2.AttachBlockRequest(agent=name, block=block)
            ),
        ),
        (
            "agent",
            lambda name: stub.DetachBlock(
                agent_service_pb2.DetachBlockRequest(agent=name, block=block)
            ),
        ),
        (
            "agent",
            lambda name: stub.ListAgentTools(agent_service_pb2.ListAgentToolsRequest(agent=name)),
        ),
        (
            "agent",
            lambda name: stub.AttachTool(
                agent_service_pb2.AttachToolRequest(agent=name, tool=tool)
            ),
        ),
        (
            "agent",
            lambda name: stub.DetachTool(
                agent_service_pb2.DetachToolRequest(agent=name, tool=tool)
            ),
        ),
    ]
    for field, call in calls:
        violations = await invalid(call(""), field)
        assert violations[field] == "is required"
        for name in MALFORMED_AGENT_NAMES:
            violations = await invalid(call(name), field)
            assert "agents/agent-<uuid4>" in violations[field]


async def test_malformed_block_and_tool_names_are_invalid_argument(api: ApiHarness) -> None:
    agent = await create_agent(api.org_a)
    stub = api.org_a.agents
    for bad in ("", "human", f"tools/tool-{uuid.uuid4()}", f"blocks/agent-{uuid.uuid4()}"):
        await invalid(
            stub.AttachBlock(agent_service_pb2.AttachBlockRequest(agent=agent.name, block=bad)),
            "block",
        )
        await invalid(
            stub.DetachBlock(agent_service_pb2.DetachBlockRequest(agent=agent.name, block=bad)),
            "block",
        )
    for bad in ("", "echo", f"blocks/block-{uuid.uuid4()}", f"tools/block-{uuid.uuid4()}"):
        await invalid(
            stub.AttachTool(agent_service_pb2.AttachToolRequest(agent=agent.name, tool=bad)), "tool"
        )
        await invalid(
            stub.DetachTool(agent_service_pb2.DetachToolRequest(agent=agent.name, tool=bad)), "tool"
        )


async def test_member_keys_work_and_calls_without_a_key_do_not(api: ApiHarness) -> None:
    agent = await create_agent(api.member_a, agent_pb2.Agent(display_name="by member"))
    assert (await get_agent(api.org_a, agent.name)).display_name == "by member"
    assert await list_agent_ids(api.member_a) == [agent.id]

    await failure(
        get_agent(api.anonymous, agent.name), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"
    )
    await failure(
        api.anonymous.agents.ListAgents(agent_service_pb2.ListAgentsRequest()),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )
    await failure(create_agent(api.anonymous), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    assert await count_agents(api.org_a) == 1


# --- ListAgents and CountAgents ------------------------------------------------------------


async def test_list_agents_pages_oldest_first(api: ApiHarness) -> None:
    created = [
        (await create_agent(api.org_a, agent_pb2.Agent(display_name=f"agent {index}"))).id
        for index in range(7)
    ]

    seen: list[str] = []
    tokens: list[str] = []
    token = ""
    for _ in range(10):
        page = await api.org_a.agents.ListAgents(
            agent_service_pb2.ListAgentsRequest(page_size=3, page_token=token)
        )
        assert len(page.agents) <= 3
        seen.extend(agent.id for agent in page.agents)
        token = page.next_page_token
        if not token:
            break
        tokens.append(token)
    assert seen == created
    assert len(tokens) == 2 and len(set(tokens)) == 2
    assert all(agent_id not in token for token in tokens for agent_id in created)

    # page_size 0 means the default (50); the page size may change between pages.
    everything = await api.org_a.agents.ListAgents(agent_service_pb2.ListAgentsRequest())
    assert [agent.id for agent in everything.agents] == created
    assert everything.next_page_token == ""
    rest = await api.org_a.agents.ListAgents(
        agent_service_pb2.ListAgentsRequest(page_size=100, page_token=tokens[0])
    )
    assert [agent.id for agent in rest.agents] == created[3:]
    assert rest.next_page_token == ""
    # More than 1000 is served as 1000, not refused.
    huge = await api.org_a.agents.ListAgents(agent_service_pb2.ListAgentsRequest(page_size=5000))
    assert [agent.id for agent in huge.agents] == created
    # A page that ends exactly at the last agent promises no more.
    exact = await api.org_a.agents.ListAgents(
        agent_service_pb2.ListAgentsRequest(page_size=4, page_token=tokens[0])
    )
    assert [agent.id for agent in exact.agents] == created[3:]
    assert exact.next_page_token == ""

    # A listed agent is the same resource GetAgent returns.
    assert everything.agents[0] == await get_agent(api.org_a, f"agents/{created[0]}")


async def test_list_agents_rejects_bad_page_tokens(api: ApiHarness) -> None:
    blocks = [block_pb2.Block(label="one"), block_pb2.Block(label="two")]
    for _ in range(2):
        await create_agent(
            api.org_a,
            agent_pb2.Agent(display_name="x", tags=["red", "blue"]),
            memory_blocks=blocks,
        )
    list_agents = api.org_a.agents.ListAgents
    filtered = await list_agents(
        agent_service_pb2.ListAgentsRequest(page_size=1, display_name="x", tags=["red", "blue"])
    )
    token = filtered.next_page_token
    assert token
    agent = filtered.agents[0]
    blocks_token = (
        await api.org_a.agents.ListAgentBlocks(
            agent_service_pb2.ListAgentBlocksRequest(agent=agent.name, page_size=1)
        )
    ).next_page_token

    changed_filters = [
        agent_service_pb2.ListAgentsRequest(page_token=token),
        agent_service_pb2.ListAgentsRequest(
            page_token=token, display_name="y", tags=["red", "blue"]
        ),
        agent_service_pb2.ListAgentsRequest(page_token=token, display_name="x"),
        agent_service_pb2.ListAgentsRequest(page_token=token, display_name="x", tags=["red"]),
        agent_service_pb2.ListAgentsRequest(
            page_token=token, display_name="x", tags=["red", "blue"], match_all_tags=True
        ),
    ]
    for request in changed_filters:
        await invalid(list_agents(request), "page_token", reason="INVALID_PAGE_TOKEN")

    garbage = [
        "not a token",
        "bm90LWpzb24",  # base64 of "not-json"
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"a": 5, "f": "x"}').decode(),
        token[:-3],
        token + "AAAA",
        "%%%",
    ]
    for bad in garbage:
        await invalid(
            list_agents(agent_service_pb2.ListAgentsRequest(page_token=bad)),
            "page_token",
            reason="INVALID_PAGE_TOKEN",
        )
    # A token of another list is not a token of this one.
    assert blocks_token
    await invalid(
        list_agents(agent_service_pb2.ListAgentsRequest(page_token=blocks_token)),
        "page_token",
        reason="INVALID_PAGE_TOKEN",
    )

    # The same filters, in another order, still accept the token.
    page = await list_agents(
        agent_service_pb2.ListAgentsRequest(
            page_token=token, display_name="x", tags=["blue", "red"]
        )
    )
    assert len(page.agents) == 1 and page.agents[0].id != agent.id

    await invalid(list_agents(agent_service_pb2.ListAgentsRequest(page_size=-1)), "page_size")


async def test_list_agents_rejects_altered_token_positions(api: ApiHarness) -> None:
    await create_agent(api.org_a)
    filters = {"name": "", "tags": [], "all": False}
    positions: list[list[Any]] = [
        ["yesterday", "agent-x"],
        [12, 34],
        [None, None],
        ["2024-01-01T00:00:00+00:00"],
        ["2024-01-01T00:00:00+00:00", "agent-x", "extra"],
    ]
    for position in positions:
        await invalid(
            api.org_a.agents.ListAgents(
                agent_service_pb2.ListAgentsRequest(page_token=forged_token(position, filters))
            ),
            "page_token",
            reason="INVALID_PAGE_TOKEN",
        )


async def test_list_agents_rejects_a_token_with_a_naive_time(api: ApiHarness) -> None:
    await create_agent(api.org_a)
    token = forged_token(["2024-01-01T00:00:00", "agent-x"], {"name": "", "tags": [], "all": False})

    await invalid(
        api.org_a.agents.ListAgents(agent_service_pb2.ListAgentsRequest(page_token=token)),
        "page_token",
        reason="INVALID_PAGE_TOKEN",
    )


async def test_list_and_count_filter_by_display_name_and_tags(api: ApiHarness) -> None:
    async def make(display_name: str, *tags: str) -> str:
        agent = await create_agent(api.org_a, agent_pb2.Agent(display_name=display_name, tags=tags))
        return agent.id

    theirs = await create_agent(api.org_b, agent_pb2.Agent(display_name="alpha", tags=["red"]))
    alpha = await make("alpha", "red")
    beta = await make("beta", "red", "blue")
    gamma = await make("gamma", "blue")
    alpha_again = await make("alpha")
    delta = await make("delta", "red", "blue", "green")

    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({}, [alpha, beta, gamma, alpha_again, delta]),
        ({"display_name": "alpha"}, [alpha, alpha_again]),
        ({"display_name": "Alpha"}, []),
        ({"display_name": "alph"}, []),
        ({"tags": ["red"]}, [alpha, beta, delta]),
        ({"tags": ["red", "blue"]}, [alpha, beta, gamma, delta]),
        ({"tags": ["red", "blue"], "match_all_tags": True}, [beta, delta]),
        ({"tags": ["red", "red", "blue"], "match_all_tags": True}, [beta, delta]),
        ({"tags": ["red", "blue", "green"], "match_all_tags": True}, [delta]),
        ({"tags": ["purple"]}, []),
        ({"tags": ["red", "purple"], "match_all_tags": True}, []),
        ({"display_name": "alpha", "tags": ["red"]}, [alpha]),
        ({"match_all_tags": True}, [alpha, beta, gamma, alpha_again, delta]),
    ]
    for filters, expected in cases:
        assert await list_agent_ids(api.org_a, **filters) == expected, filters
        assert await count_agents(api.org_a, **filters) == len(expected), filters

    # Filtered pages: each page respects the filter and the pages add up.
    first = await api.org_a.agents.ListAgents(
        agent_service_pb2.ListAgentsRequest(page_size=2, tags=["blue", "red"])
    )
    second = await api.org_a.agents.ListAgents(
        agent_service_pb2.ListAgentsRequest(
            page_size=2, tags=["red", "blue"], page_token=first.next_page_token
        )
    )
    assert [a.id for a in first.agents] + [a.id for a in second.agents] == [
        alpha,
        beta,
        gamma,
        delta,
    ]
    assert second.next_page_token == ""

    # The other organization's agent with the same name and tag is invisible here, and
    # the other way round.
    assert theirs.id not in await list_agent_ids(api.org_a)
    assert await list_agent_ids(api.org_b, display_name="alpha", tags=["red"]) == [theirs.id]
    assert await count_agents(api.org_b) == 1


# --- UpdateAgent -----------------------------------------------------------------------------


async def test_update_agent_with_explicit_mask_changes_only_those_fields(api: ApiHarness) -> None:
    agent = await create_agent(
        api.org_a,
        agent_pb2.Agent(display_name="before", description="old", tags=["keep"]),
    )
    # Read first, so that GetAgent has a message of the old agent it could reuse.
    assert await get_agent(api.org_a, agent.name) == agent

    updated = await api.org_a.agents.UpdateAgent(
        agent_service_pb2.UpdateAgentRequest(
            agent=agent_pb2.Agent(
                name=agent.name,
                display_name="ignored",
                description="new",
                message_buffer_autoclear=False,
                model="anthropic/claude",
            ),
            update_mask=mask("description", "model"),
        )
    )

    assert updated.display_name == "before"
    assert updated.description == "new"
    assert updated.model == "anthropic/claude"
    assert list(updated.tags) == ["keep"]
    assert updated.system == agent.system
    assert updated.etag != agent.etag
    assert updated.create_time == agent.create_time
    assert await get_agent(api.org_a, agent.name) == updated


async def test_update_agent_mask_can_clear_a_field(api: ApiHarness) -> None:
    agent = await create_agent(
        api.org_a,
        agent_pb2.Agent(
            description="old",
            tags=["a", "b"],
            model="openai/gpt-4o",
            context_window_limit=1000,
            message_buffer_autoclear=True,
            metadata=struct({"k": "v"}),
            model_settings=agent_pb2.ModelSettings(temperature=1.0),
        ),
    )

    updated = await api.org_a.agents.UpdateAgent(
        agent_service_pb2.UpdateAgentRequest(
            agent=agent_pb2.Agent(name=agent.name),
            update_mask=mask(
                "tags",
                "model",
                "context_window_limit",
                "message_buffer_autoclear",
                "metadata",
                "model_settings",
            ),
        )
    )

    assert list(updated.tags) == []
    assert updated.model == ""
    assert updated.context_window_limit == 0
    assert updated.message_buffer_autoclear is False
    assert json_format.MessageToDict(updated.metadata) == {}
    assert not updated.model_settings.HasField("temperature")
    assert updated.description == "old"
    assert await count_agents(api.org_a, tags=["a"]) == 0


async def test_update_agent_empty_mask_updates_the_fields_set(api: ApiHarness) -> None:
    agent = await create_agent(
        api.org_a, agent_pb2.Agent(display_name="named", description="old", tags=["x"])
    )

    updated = await api.org_a.agents.UpdateAgent(
        agent_service_pb2.UpdateAgentRequest(
            agent=agent_pb2.Agent(
                name=agent.name,
                description="new",
                tags=["y", "z", "y"],
                model_settings=agent_pb2.ModelSettings(max_output_tokens=64),
                # Immutable: not among the fields an empty mask picks up.
                agent_type=agent_pb2.AGENT_TYPE_HEARTBEAT,
            )
        )
    )

    assert updated.agent_type == agent_pb2.AGENT_TYPE_NATIVE
    assert updated.display_name == "named"
    assert updated.system == agent.system
    assert updated.description == "new"
    assert list(updated.tags) == ["y", "z"]
    assert updated.model_settings.max_output_tokens == 64
    assert await list_agent_ids(api.org_a, tags=["x"]) == []
    assert await list_agent_ids(api.org_a, tags=["y", "z"], match_all_tags=True) == [agent.id]


async def test_update_agent_star_mask_replaces_every_updatable_field(api: ApiHarness) -> None:
    agent = await create_agent(
        api.org_a,
        agent_pb2.Agent(
            display_name="old",
            description="desc",
            model="openai/gpt-4o",
            tags=["t"],
            metadata=struct({"k": 1}),
            tool_rules=[rule(terminal={"tool_name": "send_message"})],
            agent_type=agent_pb2.AGENT_TYPE_HEARTBEAT,
        ),
    )

    updated = await api.org_a.agents.UpdateAgent(
        agent_service_pb2.UpdateAgentRequest(
            agent=agent_pb2.Agent(name=agent.name, display_name="new", system="fresh prompt"),
            update_mask=mask("*"),
        )
    )

    assert updated.display_name == "new"
    assert updated.system == "fresh prompt"
    assert updated.description == ""
    assert updated.model == ""
    assert list(updated.tags) == []
    assert json_format.MessageToDict(updated.metadata) == {}
    assert list(updated.tool_rules) == []
    # agent_type is immutable: "*" covers updatable fields only.
    assert updated.agent_type == agent_pb2.AGENT_TYPE_HEARTBEAT


async def test_update_agent_rejects_unknown_mask_paths(api: ApiHarness) -> None:
    agent = await create_agent(api.org_a, agent_pb2.Agent(description="unchanged"))

    for paths in (
        ["nope"],
        ["agent_type"],
        ["blocks"],
        ["tools"],
        ["name"],
        ["etag"],
        ["description", "create_time"],
        ["*", "description"],
        ["model_settings.temperature"],
    ):
        violations = await invalid(
            api.org_a.agents.UpdateAgent(
                agent_service_pb2.UpdateAgentRequest(
                    agent=agent_pb2.Agent(
                        name=agent.name,
                        description="changed",
                        agent_type=agent_pb2.AGENT_TYPE_HEARTBEAT,
                    ),
                    update_mask=mask(*paths),
                )
            ),
            "update_mask",
        )
        assert "description" in violations["update_mask"]
    assert await get_agent(api.org_a, agent.name) == agent


async def test_update_agent_etag(api: ApiHarness) -> None:
    agent = await create_agent(api.org_a, agent_pb2.Agent(description="v1"))

    def update(description: str, etag: str) -> Awaitable[agent_pb2.Agent]:
        result: Awaitable[agent_pb2.Agent] = api.org_a.agents.UpdateAgent(
            agent_service_pb2.UpdateAgentRequest(
                agent=agent_pb2.Agent(name=agent.name, description=description, etag=etag)
            )
        )
        return result

    second = await update("v2", agent.etag)
    assert second.description == "v2"
    assert second.etag != agent.etag

    for stale in (agent.etag, "garbage", '"999"'):
        status = await failure(update("v3", stale), grpc.StatusCode.ABORTED, "CONCURRENT_UPDATE")
        info = unpack_detail(status, error_details_pb2.ErrorInfo)
        assert info is not None and info.metadata["resource"] == agent.name
    assert (await get_agent(api.org_a, agent.name)).description == "v2"

    # No etag: unconditional.
    third = await update("v3", "")
    assert third.description == "v3"
    assert third.etag not in (agent.etag, second.etag)
    fourth = await update("v4", third.etag)
    assert fourth.description == "v4"


async def test_update_agent_validates_new_values(api: ApiHarness) -> None:
    agent = await create_agent(api.org_a, agent_pb2.Agent(display_name="valid"))
    cases: list[tuple[agent_pb2.Agent, list[str], str]] = [
        (agent_pb2.Agent(display_name="in/valid"), [], "agent.display_name"),
        (agent_pb2.Agent(), ["display_name"], "agent.display_name"),
        (agent_pb2.Agent(tags=["", "x"]), [], "agent.tags"),
        (agent_pb2.Agent(model="no-slash"), [], "agent.model"),
        (agent_pb2.Agent(context_window_limit=-5), [], "agent.context_window_limit"),
        (
            agent_pb2.Agent(model_settings=agent_pb2.ModelSettings(temperature=-0.1)),
            [],
            "agent.model_settings.temperature",
        ),
        (agent_pb2.Agent(tool_rules=[rule(init={})]), [], "agent.tool_rules[0].init.tool_name"),
    ]
    for values, paths, field in cases:
        values.name = agent.name
        await invalid(
            api.org_a.agents.UpdateAgent(
                agent_service_pb2.UpdateAgentRequest(agent=values, update_mask=mask(*paths))
            ),
            field,
        )
    assert await get_agent(api.org_a, agent.name) == agent

    rules = [rule(init={"tool_name": "memory_insert"}), rule(terminal={"tool_name": "x"})]
    updated = await api.org_a.agents.UpdateAgent(
        agent_service_pb2.UpdateAgentRequest(
            agent=agent_pb2.Agent(name=agent.name, tool_rules=rules)
        )
    )
    assert list(updated.tool_rules) == rules


async def test_update_missing_or_foreign_agent_is_not_found(api: ApiHarness) -> None:
    mine = await create_agent(api.org_a, agent_pb2.Agent(description="mine"))
    gone = missing_agent()

    for client, name in ((api.org_a, gone), (api.org_b, mine.name)):
        await not_found(
            client.agents.UpdateAgent(
                agent_service_pb2.UpdateAgentRequest(
                    agent=agent_pb2.Agent(name=name, description="hijacked")
                )
            ),
            "agent",
            id_of(name),
        )
    assert (await get_agent(api.org_a, mine.name)).description == "mine"


# --- DeleteAgent -----------------------------------------------------------------------------


async def test_delete_agent_removes_private_blocks_but_keeps_shared_ones(api: ApiHarness) -> None:
    shared = await create_block(api.org_a, "team", "shared notes")
    standalone = await create_block(api.org_a, "scratch")
    echo = await create_tool(api.org_a, "echo")
    doomed = await create_agent(
        api.org_a,
        memory_blocks=[block_pb2.Block(label="human", value="private")],
        block_names=[shared.name, standalone.name],
        tool_names=[echo.name],
        base_tools=True,
    )
    survivor = await create_agent(api.org_a, block_names=[shared.name], tool_names=[echo.name])
    private_block = next(
        name for name in doomed.blocks if name not in (shared.name, standalone.name)
    )

    result = await api.org_a.agents.DeleteAgent(
        agent_service_pb2.DeleteAgentRequest(name=doomed.name)
    )

    assert result.ByteSize() == 0
    await not_found(get_agent(api.org_a, doomed.name), "agent", doomed.id)
    # Blocks only the deleted agent used go with it (inline or attached).
    for gone in (private_block, standalone.name):
        await not_found(
            api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=gone)),
            "block",
            id_of(gone),
        )
    kept = await api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=shared.name))
    assert kept.value == "shared notes"
    assert list(kept.agents) == [survivor.name]
    assert list((await get_agent(api.org_a, survivor.name)).blocks) == [shared.name]
    assert await agent_tool_names(api.org_a, survivor.name) == ["echo"]
    # Tools are not owned by agents.
    tool = await api.org_a.tools.GetTool(tool_service_pb2.GetToolRequest(name=echo.name))
    assert tool.tool_name == "echo"
    assert await list_agent_ids(api.org_a) == [survivor.id]
    assert await count_agents(api.org_a) == 1

    # Once its last agent goes, the formerly shared block goes too.
    await api.org_a.agents.DeleteAgent(agent_service_pb2.DeleteAgentRequest(name=survivor.name))
    await not_found(
        api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=shared.name)),
        "block",
        shared.id,
    )
    assert await count_agents(api.org_a) == 0


async def test_delete_agent_etag_foreign_and_repeat(api: ApiHarness) -> None:
    agent = await create_agent(api.org_a, memory_blocks=[block_pb2.Block(label="human")])
    await not_found(
        api.org_b.agents.DeleteAgent(agent_service_pb2.DeleteAgentRequest(name=agent.name)),
        "agent",
        agent.id,
    )
    updated = await api.org_a.agents.UpdateAgent(
        agent_service_pb2.UpdateAgentRequest(
            agent=agent_pb2.Agent(name=agent.name, description="changed")
        )
    )

    await failure(
        api.org_a.agents.DeleteAgent(
            agent_service_pb2.DeleteAgentRequest(name=agent.name, etag=agent.etag)
        ),
        grpc.StatusCode.ABORTED,
        "CONCURRENT_UPDATE",
    )
    assert (await get_agent(api.org_a, agent.name)).description == "changed"
    assert await agent_block_labels(api.org_a, agent.name) == ["human"]

    await api.org_a.agents.DeleteAgent(
        agent_service_pb2.DeleteAgentRequest(name=agent.name, etag=updated.etag)
    )
    await not_found(get_agent(api.org_a, agent.name), "agent", agent.id)
    await not_found(
        api.org_a.agents.DeleteAgent(agent_service_pb2.DeleteAgentRequest(name=agent.name)),
        "agent",
        agent.id,
    )


# --- blocks of an agent ----------------------------------------------------------------------


async def test_list_agent_blocks_pages_by_label(api: ApiHarness) -> None:
    labels = ["echo", "alpha", "delta", "charlie", "bravo"]
    agent = await create_agent(
        api.org_a, memory_blocks=[block_pb2.Block(label=label) for label in labels]
    )
    other = await create_agent(api.org_a, memory_blocks=[block_pb2.Block(label="zulu")])

    pages: list[list[str]] = []
    tokens: list[str] = []
    token = ""
    while True:
        page = await api.org_a.agents.ListAgentBlocks(
            agent_service_pb2.ListAgentBlocksRequest(
                agent=agent.name, page_size=2, page_token=token
            )
        )
        pages.append([block.label for block in page.blocks])
        token = page.next_page_token
        if not token:
            break
        tokens.append(token)
        assert len(pages) < 5
    assert pages == [["alpha", "bravo"], ["charlie", "delta"], ["echo"]]
    assert await agent_block_labels(api.org_a, other.name) == ["zulu"]

    # A token belongs to the agent it was issued for.
    await invalid(
        api.org_a.agents.ListAgentBlocks(
            agent_service_pb2.ListAgentBlocksRequest(agent=other.name, page_token=tokens[0])
        ),
        "page_token",
        reason="INVALID_PAGE_TOKEN",
    )
    await invalid(
        api.org_a.agents.ListAgentBlocks(
            agent_service_pb2.ListAgentBlocksRequest(agent=agent.name, page_token="junk")
        ),
        "page_token",
        reason="INVALID_PAGE_TOKEN",
    )
    gone = missing_agent()
    await not_found(
        api.org_a.agents.ListAgentBlocks(agent_service_pb2.ListAgentBlocksRequest(agent=gone)),
        "agent",
        id_of(gone),
    )
    await not_found(
        api.org_b.agents.ListAgentBlocks(
            agent_service_pb2.ListAgentBlocksRequest(agent=agent.name)
        ),
        "agent",
        agent.id,
    )


async def test_agent_block_pages_agree_with_one_page_for_any_labels(api: ApiHarness) -> None:
    labels = ["Zed", "alpha", "Beta", "_under", "beta", "9lives", "émile", "a b"]
    agent = await create_agent(
        api.org_a, memory_blocks=[block_pb2.Block(label=label) for label in labels]
    )

    whole = await agent_block_labels(api.org_a, agent.name)
    paged: list[str] = []
    token = ""
    for _ in range(len(labels) + 1):
        page = await api.org_a.agents.ListAgentBlocks(
            agent_service_pb2.ListAgentBlocksRequest(
                agent=agent.name, page_size=1, page_token=token
            )
        )
        paged.extend(block.label for block in page.blocks)
        token = page.next_page_token
        if not token:
            break
    assert sorted(whole) == sorted(labels)
    assert paged == whole
    # Agent.blocks lists the same blocks in the same order.
    names = {
        block.label: block.name
        for block in (
            await api.org_a.agents.ListAgentBlocks(
                agent_service_pb2.ListAgentBlocksRequest(agent=agent.name)
            )
        ).blocks
    }
    assert list(agent.blocks) == [names[label] for label in whole]


async def test_get_agent_block_by_label(api: ApiHarness) -> None:
    agent = await create_agent(
        api.org_a,
        memory_blocks=[
            block_pb2.Block(label="human", value="Ada"),
            block_pb2.Block(label="persona", value="Helper"),
        ],
    )

    block = await api.org_a.agents.GetAgentBlock(
        agent_service_pb2.GetAgentBlockRequest(agent=agent.name, label="persona")
    )
    assert block.label == "persona" and block.value == "Helper"
    assert list(block.agents) == [agent.name]
    assert block.name in agent.blocks

    await not_found(
        api.org_a.agents.GetAgentBlock(
            agent_service_pb2.GetAgentBlockRequest(agent=agent.name, label="Human")
        ),
        "block",
        f"{agent.name}/blocks/Human",
    )
    await not_found(
        api.org_b.agents.GetAgentBlock(
            agent_service_pb2.GetAgentBlockRequest(agent=agent.name, label="human")
        ),
        "agent",
        agent.id,
    )
    gone = missing_agent()
    await not_found(
        api.org_a.agents.GetAgentBlock(
            agent_service_pb2.GetAgentBlockRequest(agent=gone, label="human")
        ),
        "agent",
        id_of(gone),
    )


async def test_agent_block_calls_require_a_label(api: ApiHarness) -> None:
    agent = await create_agent(api.org_a, memory_blocks=[block_pb2.Block(label="human")])

    await invalid(
        api.org_a.agents.GetAgentBlock(
            agent_service_pb2.GetAgentBlockRequest(agent=agent.name, label="")
        ),
        "label",
    )
    await invalid(
        api.org_a.agents.UpdateAgentBlock(
            agent_service_pb2.UpdateAgentBlockRequest(
                agent=agent.name, label="", block=block_pb2.Block(value="v")
            )
        ),
        "label",
    )


async def test_update_agent_block_enforces_the_limit(api: ApiHarness) -> None:
    agent = await create_agent(
        api.org_a, memory_blocks=[block_pb2.Block(label="human", value="abc", limit=10)]
    )
    original = await api.org_a.agents.GetAgentBlock(
        agent_service_pb2.GetAgentBlockRequest(agent=agent.name, label="human")
    )

    def update(block: block_pb2.Block, *paths: str) -> Awaitable[block_pb2.Block]:
        result: Awaitable[block_pb2.Block] = api.org_a.agents.UpdateAgentBlock(
            agent_service_pb2.UpdateAgentBlockRequest(
                agent=agent.name, label="human", block=block, update_mask=mask(*paths)
            )
        )
        return result

    violations = await invalid(update(block_pb2.Block(value="x" * 11)), "block.value")
    assert "10" in violations["block.value"]
    await invalid(update(block_pb2.Block(limit=2)), "block.limit")
    await invalid(update(block_pb2.Block(value="x" * 20, limit=15)), "block.value")
    await invalid(update(block_pb2.Block(limit=-1)), "block.limit")
    unchanged = await api.org_a.agents.GetAgentBlock(
        agent_service_pb2.GetAgentBlockRequest(agent=agent.name, label="human")
    )
    assert unchanged == original

    at_limit = await update(block_pb2.Block(value="y" * 10))
    assert at_limit.value == "y" * 10 and at_limit.limit == 10
    raised = await update(block_pb2.Block(value="z" * 20, limit=20))
    assert raised.value == "z" * 20 and raised.limit == 20
    assert raised.etag not in (original.etag, at_limit.etag)


async def test_update_agent_block_masks_and_etags(api: ApiHarness) -> None:
    agent = await create_agent(
        api.org_a,
        memory_blocks=[
            block_pb2.Block(label="human", value="v1", description="about the user", read_only=True)
        ],
    )
    original = await api.org_a.agents.GetAgentBlock(
        agent_service_pb2.GetAgentBlockRequest(agent=agent.name, label="human")
    )

    def update(
        block: block_pb2.Block, *paths: str, label: str = "human"
    ) -> Awaitable[block_pb2.Block]:
        result: Awaitable[block_pb2.Block] = api.org_a.agents.UpdateAgentBlock(
            agent_service_pb2.UpdateAgentBlockRequest(
                agent=agent.name, label=label, block=block, update_mask=mask(*paths)
            )
        )
        return result

    # read_only binds the agent's memory tools, not the API.
    masked = await update(block_pb2.Block(value="v2", description="ignored"), "value")
    assert masked.value == "v2"
    assert masked.description == "about the user"
    assert masked.read_only is True
    assert masked.name == original.name

    for stale in (original.etag, "nonsense"):
        await failure(
            update(block_pb2.Block(value="v3", etag=stale)),
            grpc.StatusCode.ABORTED,
            "CONCURRENT_UPDATE",
        )
    with_etag = await update(block_pb2.Block(value="v3", etag=masked.etag))
    assert with_etag.value == "v3"

    for paths in (["agents"], ["name"], ["value", "nope"]):
        await invalid(update(block_pb2.Block(value="v4"), *paths), "update_mask")

    star = await update(block_pb2.Block(label="human", value="only value"), "*")
    assert star.value == "only value"
    assert star.description == "" and star.read_only is False and star.limit == DEFAULT_BLOCK_LIMIT

    await not_found(
        update(block_pb2.Block(value="x"), label="missing"),
        "block",
        f"{agent.name}/blocks/missing",
    )
    await not_found(
        api.org_b.agents.UpdateAgentBlock(
            agent_service_pb2.UpdateAgentBlockRequest(
                agent=agent.name, label="human", block=block_pb2.Block(value="hijack")
            )
        ),
        "agent",
        agent.id,
    )
    final = await api.org_a.agents.GetAgentBlock(
        agent_service_pb2.GetAgentBlockRequest(agent=agent.name, label="human")
    )
    assert final.value == "only value"


async def test_update_agent_block_renames_its_label(api: ApiHarness) -> None:
    agent = await create_agent(
        api.org_a,
        memory_blocks=[block_pb2.Block(label="human", value="Ada"), block_pb2.Block(label="notes")],
    )

    renamed = await api.org_a.agents.UpdateAgentBlock(
        agent_service_pb2.UpdateAgentBlockRequest(
            agent=agent.name, label="human", block=block_pb2.Block(label="user")
        )
    )

    assert renamed.label == "user" and renamed.value == "Ada"
    assert await agent_block_labels(api.org_a, agent.name) == ["notes", "user"]
    found = await api.org_a.agents.GetAgentBlock(
        agent_service_pb2.GetAgentBlockRequest(agent=agent.name, label="user")
    )
    assert found.name == renamed.name
    await not_found(
        api.org_a.agents.GetAgentBlock(
            agent_service_pb2.GetAgentBlockRequest(agent=agent.name, label="human")
        ),
        "block",
        f"{agent.name}/blocks/human",
    )
    await invalid(
        api.org_a.agents.UpdateAgentBlock(
            agent_service_pb2.UpdateAgentBlockRequest(
                agent=agent.name,
                label="user",
                block=block_pb2.Block(label=""),
                update_mask=mask("label"),
            )
        ),
        "block.label",
    )


async def test_update_agent_block_rename_onto_a_taken_label_is_refused(api: ApiHarness) -> None:
    agent = await create_agent(
        api.org_a,
        memory_blocks=[block_pb2.Block(label="human", value="Ada"), block_pb2.Block(label="notes")],
    )
    # A shared block renamed through one agent must not collide on the other agent either.
    shared = await create_block(api.org_a, "team")
    first = await create_agent(api.org_a, block_names=[shared.name])
    second = await create_agent(
        api.org_a, memory_blocks=[block_pb2.Block(label="notes")], block_names=[shared.name]
    )

    for target, label in ((agent, "human"), (first, "team")):
        status = await failure(
            api.org_a.agents.UpdateAgentBlock(
                agent_service_pb2.UpdateAgentBlockRequest(
                    agent=target.name, label=label, block=block_pb2.Block(label="notes")
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "FAILED_PRECONDITION",
        )
        # The same refusal as attaching a block whose label the agent already uses.
        failure_detail = unpack_detail(status, error_details_pb2.PreconditionFailure)
        assert failure_detail is not None
        assert failure_detail.violations[0].type == "LABEL_IN_USE"
        assert "already has a block labelled 'notes'" in status.message

    assert await agent_block_labels(api.org_a, agent.name) == ["human", "notes"]
    assert await agent_block_labels(api.org_a, first.name) == ["team"]
    assert await agent_block_labels(api.org_a, second.name) == ["notes", "team"]


async def test_update_shared_block_through_one_agent_shows_on_the_other(api: ApiHarness) -> None:
    shared = await create_block(api.org_a, "team", "v1")
    first = await create_agent(api.org_a, block_names=[shared.name])
    second = await create_agent(api.org_a, block_names=[shared.name])

    await api.org_a.agents.UpdateAgentBlock(
        agent_service_pb2.UpdateAgentBlockRequest(
            agent=first.name, label="team", block=block_pb2.Block(value="v2", label="squad")
        )
    )

    seen = await api.org_a.agents.GetAgentBlock(
        agent_service_pb2.GetAgentBlockRequest(agent=second.name, label="squad")
    )
    assert seen.name == shared.name
    assert seen.value == "v2"
    assert sorted(seen.agents) == sorted([first.name, second.name])


# --- AttachBlock / DetachBlock ---------------------------------------------------------------


async def test_attach_and_detach_block(api: ApiHarness) -> None:
    agent = await create_agent(api.org_a, memory_blocks=[block_pb2.Block(label="human")])
    block = await create_block(api.org_a, "notes", "remember milk")

    def attach(name: str) -> Awaitable[agent_pb2.Agent]:
        result: Awaitable[agent_pb2.Agent] = api.org_a.agents.AttachBlock(
            agent_service_pb2.AttachBlockRequest(agent=agent.name, block=name)
        )
        return result

    def detach(name: str) -> Awaitable[agent_pb2.Agent]:
        result: Awaitable[agent_pb2.Agent] = api.org_a.agents.DetachBlock(
            agent_service_pb2.DetachBlockRequest(agent=agent.name, block=name)
        )
        return result

    attached = await attach(block.name)
    assert block.name in attached.blocks and len(attached.blocks) == 2
    assert await agent_block_labels(api.org_a, agent.name) == ["human", "notes"]
    found = await api.org_a.agents.GetAgentBlock(
        agent_service_pb2.GetAgentBlockRequest(agent=agent.name, label="notes")
    )
    assert found.value == "remember milk" and list(found.agents) == [agent.name]

    again = await attach(block.name)
    assert list(again.blocks) == list(attached.blocks)

    detached = await detach(block.name)
    assert list(detached.blocks) == [name for name in attached.blocks if name != block.name]
    kept = await api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=block.name))
    assert list(kept.agents) == [] and kept.value == "remember milk"

    # Detaching a block that is not attached changes nothing.
    still = await detach(block.name)
    assert list(still.blocks) == list(detached.blocks)
    assert await agent_block_labels(api.org_a, agent.name) == ["human"]

    gone = missing_block()
    await not_found(attach(gone), "block", id_of(gone))
    await not_found(detach(gone), "block", id_of(gone))


async def test_attach_block_with_a_taken_label_is_failed_precondition(api: ApiHarness) -> None:
    agent = await create_agent(api.org_a, memory_blocks=[block_pb2.Block(label="human", value="a")])
    rival = await create_block(api.org_a, "human", "b")

    status = await failure(
        api.org_a.agents.AttachBlock(
            agent_service_pb2.AttachBlockRequest(agent=agent.name, block=rival.name)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "FAILED_PRECONDITION",
    )

    failure_detail = unpack_detail(status, error_details_pb2.PreconditionFailure)
    assert failure_detail is not None
    [violation] = failure_detail.violations
    assert violation.type == "LABEL_IN_USE"
    assert violation.subject == agent.name
    assert (await get_agent(api.org_a, agent.name)).blocks == agent.blocks
    block = await api.org_a.agents.GetAgentBlock(
        agent_service_pb2.GetAgentBlockRequest(agent=agent.name, label="human")
    )
    assert block.value == "a"


async def test_attach_block_across_organizations_is_not_found(api: ApiHarness) -> None:
    agent_a = await create_agent(api.org_a)
    block_a = await create_block(api.org_a, "human")
    block_b = await create_block(api.org_b, "human")

    await not_found(
        api.org_a.agents.AttachBlock(
            agent_service_pb2.AttachBlockRequest(agent=agent_a.name, block=block_b.name)
        ),
        "block",
        block_b.id,
    )
    await not_found(
        api.org_b.agents.AttachBlock(
            agent_service_pb2.AttachBlockRequest(agent=agent_a.name, block=block_b.name)
        ),
        "agent",
        agent_a.id,
    )
    await not_found(
        api.org_b.agents.DetachBlock(
            agent_service_pb2.DetachBlockRequest(agent=agent_a.name, block=block_a.name)
        ),
        "agent",
        agent_a.id,
    )
    gone = missing_agent()
    await not_found(
        api.org_a.agents.AttachBlock(
            agent_service_pb2.AttachBlockRequest(agent=gone, block=block_a.name)
        ),
        "agent",
        id_of(gone),
    )
    assert list((await get_agent(api.org_a, agent_a.name)).blocks) == []


# --- tools of an agent -----------------------------------------------------------------------


async def test_list_agent_tools_pages_by_tool_name(api: ApiHarness) -> None:
    names = ["zeta", "alpha", "mid"]
    tools = [await create_tool(api.org_a, name) for name in names]
    agent = await create_agent(
        api.org_a,
        agent_pb2.Agent(agent_type=agent_pb2.AGENT_TYPE_HEARTBEAT),
        tool_names=[tool.name for tool in tools],
        base_tools=True,
    )
    expected = sorted([*names, *HEARTBEAT_BASE_TOOLS])

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await api.org_a.agents.ListAgentTools(
            agent_service_pb2.ListAgentToolsRequest(agent=agent.name, page_size=3, page_token=token)
        )
        pages.append([tool.tool_name for tool in page.tools])
        token = page.next_page_token
        if not token:
            break
        assert len(pages) < 5
    assert pages == [expected[0:3], expected[3:6], expected[6:]]
    by_name = {tool.tool_name: tool for tool in tools}
    listed = await api.org_a.agents.ListAgentTools(
        agent_service_pb2.ListAgentToolsRequest(agent=agent.name)
    )
    alpha = next(tool for tool in listed.tools if tool.tool_name == "alpha")
    assert alpha == by_name["alpha"]
    assert alpha.tool_type == tool_pb2.TOOL_TYPE_CUSTOM

    await invalid(
        api.org_a.agents.ListAgentTools(
            agent_service_pb2.ListAgentToolsRequest(agent=agent.name, page_token="junk")
        ),
        "page_token",
        reason="INVALID_PAGE_TOKEN",
    )
    await invalid(
        api.org_a.agents.ListAgentTools(
            agent_service_pb2.ListAgentToolsRequest(agent=agent.name, page_size=-2)
        ),
        "page_size",
    )
    await not_found(
        api.org_b.agents.ListAgentTools(agent_service_pb2.ListAgentToolsRequest(agent=agent.name)),
        "agent",
        agent.id,
    )


async def test_attach_and_detach_tool(api: ApiHarness) -> None:
    agent = await create_agent(api.org_a, base_tools=True)
    echo = await create_tool(api.org_a, "echo")

    def attach(name: str, client: Client | None = None) -> Awaitable[agent_pb2.Agent]:
        result: Awaitable[agent_pb2.Agent] = (client or api.org_a).agents.AttachTool(
            agent_service_pb2.AttachToolRequest(agent=agent.name, tool=name)
        )
        return result

    def detach(name: str, client: Client | None = None) -> Awaitable[agent_pb2.Agent]:
        result: Awaitable[agent_pb2.Agent] = (client or api.org_a).agents.DetachTool(
            agent_service_pb2.DetachToolRequest(agent=agent.name, tool=name)
        )
        return result

    attached = await attach(echo.name)
    assert echo.name in attached.tools
    assert await agent_tool_names(api.org_a, agent.name) == sorted(["echo", *NATIVE_BASE_TOOLS])

    again = await attach(echo.name)
    assert list(again.tools) == list(attached.tools)
    assert len(again.tools) == len(NATIVE_BASE_TOOLS) + 1

    detached = await detach(echo.name)
    assert echo.name not in detached.tools
    assert await agent_tool_names(api.org_a, agent.name) == NATIVE_BASE_TOOLS
    tool = await api.org_a.tools.GetTool(tool_service_pb2.GetToolRequest(name=echo.name))
    assert tool.tool_name == "echo"

    still = await detach(echo.name)
    assert list(still.tools) == list(detached.tools)

    # Base tools detach like any other.
    base = detached.tools[0]
    fewer = await detach(base)
    assert base not in fewer.tools and len(fewer.tools) == len(NATIVE_BASE_TOOLS) - 1

    gone = missing_tool()
    await not_found(attach(gone), "tool", id_of(gone))
    await not_found(detach(gone), "tool", id_of(gone))
    foreign = await create_tool(api.org_b, "echo")
    await not_found(attach(foreign.name), "tool", foreign.id)
    await not_found(attach(echo.name, api.org_b), "agent", agent.id)
    await not_found(detach(base, api.org_b), "agent", agent.id)
    assert list((await get_agent(api.org_a, agent.name)).tools) == list(fewer.tools)


async def test_attaching_and_detaching_moves_the_agent_etag(api: ApiHarness) -> None:
    agents, blocks, tools = api.org_a.agents, api.org_a.blocks, api.org_a.tools
    agent = await agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(display_name="etags"), include_base_tools=False
        )
    )
    block = await blocks.CreateBlock(
        block_service_pb2.CreateBlockRequest(block=block_pb2.Block(label="notes", value="n"))
    )
    tool = await tools.CreateTool(
        tool_service_pb2.CreateToolRequest(
            tool=tool_pb2.Tool(
                source_code=(
                    "def ping(host: str) -> str:\n"
                    '    """Ping a host.\n\n    Args:\n        host: Where to send it.\n    """\n'
                    "    return host\n"
                )
            )
        )
    )
    etags = [agent.etag]
    # Calls start when made, so each step is made only when its turn comes.
    steps = [
        lambda: agents.AttachBlock(
            agent_service_pb2.AttachBlockRequest(agent=agent.name, block=block.name)
        ),
        lambda: agents.AttachTool(
            agent_service_pb2.AttachToolRequest(agent=agent.name, tool=tool.name)
        ),
        lambda: agents.DetachBlock(
            agent_service_pb2.DetachBlockRequest(agent=agent.name, block=block.name)
        ),
        lambda: agents.DetachTool(
            agent_service_pb2.DetachToolRequest(agent=agent.name, tool=tool.name)
        ),
    ]
    for step in steps:
        changed = await step()
        assert changed.etag not in etags
        etags.append(changed.etag)
    # An update with an etag read before an attachment is refused: the agent changed.
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await agents.UpdateAgent(
            agent_service_pb2.UpdateAgentRequest(
                agent=agent_pb2.Agent(name=agent.name, description="late", etag=etags[1]),
                update_mask=mask("description"),
            )
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    # Detaching what is not attached changes nothing, so the etag stays.
    unchanged = await agents.DetachBlock(
        agent_service_pb2.DetachBlockRequest(agent=agent.name, block=block.name)
    )
    assert unchanged.etag == etags[-1]
