"""AgentService: agents and the blocks and tools attached to them."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from engram.api.blocks import BLOCK_READERS, block_id_of, block_to_proto, block_values
from engram.api.convert import (
    changed_fields,
    from_struct,
    message_to_dict,
    resource_id,
    timestamp,
    to_struct,
)
from engram.api.tools import tool_id_of, tool_to_proto
from engram.rpc.application import Application
from engram.rpc.context import current_caller
from engram.services.agents import AgentFilters, AgentService, AgentView, NewAgent
from engram.services.common import etag_of
from engram.services.errors import InvalidArgumentError
from engram.store.ids import IdPrefix
from engram.store.renderings import LastRenderings
from engram.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc, tool_rule_pb2

AGENT_TYPE_TO_DOMAIN = {
    agent_pb2.AGENT_TYPE_UNSPECIFIED: "",
    agent_pb2.AGENT_TYPE_NATIVE: "native",
    agent_pb2.AGENT_TYPE_HEARTBEAT: "heartbeat",
}
AGENT_TYPE_TO_PROTO = {value: key for key, value in AGENT_TYPE_TO_DOMAIN.items() if value}


def _model_settings(message: agent_pb2.ModelSettings) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for field in ("temperature", "max_output_tokens", "parallel_tool_calls"):
        if message.HasField(field):
            settings[field] = getattr(message, field)
    if message.reasoning_effort:
        settings["reasoning_effort"] = message.reasoning_effort
    return settings


AGENT_READERS: dict[str, Any] = {
    "display_name": lambda a: a.display_name,
    "description": lambda a: a.description,
    "system": lambda a: a.system,
    "model": lambda a: a.model or None,
    "model_settings": lambda a: _model_settings(a.model_settings),
    "embedding": lambda a: a.embedding or None,
    "context_window_limit": lambda a: a.context_window_limit,
    "tags": lambda a: list(a.tags),
    "metadata": lambda a: from_struct(a.metadata),
    "tool_rules": lambda a: [message_to_dict(rule) for rule in a.tool_rules],
    "message_buffer_autoclear": lambda a: a.message_buffer_autoclear,
}


def agent_to_proto(view: AgentView) -> agent_pb2.Agent:
    agent = view.agent
    settings = agent.model_settings or {}
    return agent_pb2.Agent(
        name=f"agents/{agent.id}",
        id=agent.id,
        display_name=agent.name,
        description=agent.description,
        system=agent.system,
        agent_type=AGENT_TYPE_TO_PROTO.get(agent.agent_type, agent_pb2.AGENT_TYPE_UNSPECIFIED),
        model=agent.model or "",
        model_settings=agent_pb2.ModelSettings(**settings),
        embedding=agent.embedding or "",
        context_window_limit=agent.context_window_limit or 0,
        tags=view.tags,
        metadata=to_struct(agent.metadata_),
        tool_rules=[_rule_from_dict(rule) for rule in agent.tool_rules],
        message_buffer_autoclear=agent.message_buffer_autoclear,
        blocks=[f"blocks/{block_id}" for block_id in view.block_ids],
        tools=[f"tools/{tool_id}" for tool_id in view.tool_ids],
        create_time=timestamp(agent.created_at),
        update_time=timestamp(agent.updated_at),
        etag=etag_of(agent.version),
    )


def _rule_from_dict(rule: dict[str, Any]) -> tool_rule_pb2.ToolRule:
    from google.protobuf import json_format

    return json_format.ParseDict(rule, tool_rule_pb2.ToolRule())


def agent_id_of(name: str, field: str) -> str:
    return resource_id(name, "agents", IdPrefix.AGENT, field)


def _label_of(label: str) -> str:
    if not label:
        raise InvalidArgumentError.field("label", "is required")
    return label


def _filters(request: Any) -> AgentFilters:
    return AgentFilters(
        display_name=request.display_name,
        tags=tuple(request.tags),
        match_all_tags=request.match_all_tags,
    )


class AgentServicer(agent_service_pb2_grpc.AgentServiceServicer):
    def __init__(self, app: Application) -> None:
        self.app = app
        # GetAgent's message for each agent's last view, reused while the service
        # returns that view (an unchanged agent); grpc only serializes it.
        self._messages: LastRenderings[str, AgentView, agent_pb2.Agent] = LastRenderings(
            agent_to_proto
        )

    @property
    def service(self) -> AgentService:
        return self.app.services.agents

    async def CreateAgent(
        self, request: agent_service_pb2.CreateAgentRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.Agent:
        values = {name: read(request.agent) for name, read in AGENT_READERS.items()}
        # A value this server does not know must fail validation, not become the default.
        values["agent_type"] = AGENT_TYPE_TO_DOMAIN.get(request.agent.agent_type, "unknown")
        spec = NewAgent(
            values=values,
            memory_blocks=[block_values(block) for block in request.memory_blocks],
            block_ids=[
                block_id_of(name, f"block_names[{index}]")
                for index, name in enumerate(request.block_names)
            ],
            tool_ids=[
                tool_id_of(name, f"tool_names[{index}]")
                for index, name in enumerate(request.tool_names)
            ],
            tool_names=list(request.tools_by_name),
            include_base_tools=(
                request.include_base_tools if request.HasField("include_base_tools") else True
            ),
        )
        view = await self.service.create(current_caller(), spec, request.request_id)
        return agent_to_proto(view)

    async def GetAgent(
        self, request: agent_service_pb2.GetAgentRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.Agent:
        agent_id = agent_id_of(request.name, "name")
        return self._messages.get(agent_id, await self.service.get(current_caller(), agent_id))

    async def ListAgents(
        self, request: agent_service_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> agent_service_pb2.ListAgentsResponse:
        views, token = await self.service.list_page(
            current_caller(),
            _filters(request),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return agent_service_pb2.ListAgentsResponse(
            agents=[agent_to_proto(view) for view in views], next_page_token=token
        )

    async def CountAgents(
        self, request: agent_service_pb2.CountAgentsRequest, context: grpc.aio.ServicerContext
    ) -> agent_service_pb2.CountAgentsResponse:
        count = await self.service.count(current_caller(), _filters(request))
        return agent_service_pb2.CountAgentsResponse(count=count)

    async def UpdateAgent(
        self, request: agent_service_pb2.UpdateAgentRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.Agent:
        agent_id = agent_id_of(request.agent.name, "agent.name")
        changes = changed_fields(request.agent, request.update_mask, AGENT_READERS)
        view = await self.service.update(current_caller(), agent_id, changes, request.agent.etag)
        return agent_to_proto(view)

    async def DeleteAgent(
        self, request: agent_service_pb2.DeleteAgentRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.service.delete(current_caller(), agent_id_of(request.name, "name"), request.etag)
        return empty_pb2.Empty()

    async def ListAgentBlocks(
        self, request: agent_service_pb2.ListAgentBlocksRequest, context: grpc.aio.ServicerContext
    ) -> agent_service_pb2.ListAgentBlocksResponse:
        views, token = await self.service.list_blocks(
            current_caller(),
            agent_id_of(request.agent, "agent"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return agent_service_pb2.ListAgentBlocksResponse(
            blocks=[block_to_proto(view) for view in views], next_page_token=token
        )

    async def GetAgentBlock(
        self, request: agent_service_pb2.GetAgentBlockRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        view = await self.service.get_block(
            current_caller(), agent_id_of(request.agent, "agent"), _label_of(request.label)
        )
        return block_to_proto(view)

    async def UpdateAgentBlock(
        self, request: agent_service_pb2.UpdateAgentBlockRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        agent_id = agent_id_of(request.agent, "agent")
        label = _label_of(request.label)
        changes = changed_fields(request.block, request.update_mask, BLOCK_READERS)
        view = await self.service.update_block(
            current_caller(),
            agent_id,
            label,
            changes,
            request.block.etag,
        )
        return block_to_proto(view)

    async def AttachBlock(
        self, request: agent_service_pb2.AttachBlockRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.Agent:
        view = await self.service.attach_block(
            current_caller(),
            agent_id_of(request.agent, "agent"),
            block_id_of(request.block, "block"),
        )
        return agent_to_proto(view)

    async def DetachBlock(
        self, request: agent_service_pb2.DetachBlockRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.Agent:
        view = await self.service.detach_block(
            current_caller(),
            agent_id_of(request.agent, "agent"),
            block_id_of(request.block, "block"),
        )
        return agent_to_proto(view)

    async def ListAgentTools(
        self, request: agent_service_pb2.ListAgentToolsRequest, context: grpc.aio.ServicerContext
    ) -> agent_service_pb2.ListAgentToolsResponse:
        tools, token = await self.service.list_tools(
            current_caller(),
            agent_id_of(request.agent, "agent"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return agent_service_pb2.ListAgentToolsResponse(
            tools=[tool_to_proto(tool) for tool in tools], next_page_token=token
        )

    async def AttachTool(
        self, request: agent_service_pb2.AttachToolRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.Agent:
        view = await self.service.attach_tool(
            current_caller(), agent_id_of(request.agent, "agent"), tool_id_of(request.tool, "tool")
        )
        return agent_to_proto(view)

    async def DetachTool(
        self, request: agent_service_pb2.DetachToolRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.Agent:
        view = await self.service.detach_tool(
            current_caller(), agent_id_of(request.agent, "agent"), tool_id_of(request.tool, "tool")
        )
        return agent_to_proto(view)
