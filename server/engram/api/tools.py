"""ToolService: custom and built-in tools."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from engram.api.convert import changed_fields, from_struct, resource_id, timestamp, to_struct
from engram.rpc.application import Application
from engram.rpc.context import current_caller
from engram.services.common import etag_of
from engram.services.tools import ToolService
from engram.store.ids import IdPrefix
from engram.store.models import Tool
from engram.v1 import tool_pb2, tool_service_pb2, tool_service_pb2_grpc

TOOL_TYPE_TO_PROTO = {
    "custom": tool_pb2.TOOL_TYPE_CUSTOM,
    "memory": tool_pb2.TOOL_TYPE_MEMORY,
    "core": tool_pb2.TOOL_TYPE_CORE,
}
SOURCE_TYPE_TO_DOMAIN = {
    tool_pb2.SOURCE_TYPE_UNSPECIFIED: "",
    tool_pb2.SOURCE_TYPE_PYTHON: "python",
}

TOOL_READERS: dict[str, Any] = {
    "description": lambda t: t.description,
    "source_type": lambda t: SOURCE_TYPE_TO_DOMAIN.get(t.source_type, "unknown"),
    "source_code": lambda t: t.source_code,
    "json_schema": lambda t: from_struct(t.json_schema),
    "tags": lambda t: list(t.tags),
    "return_char_limit": lambda t: t.return_char_limit,
    "pip_requirements": lambda t: [
        {"name": r.name, "version": r.version} for r in t.pip_requirements
    ],
    "default_requires_approval": lambda t: t.default_requires_approval,
    "metadata": lambda t: from_struct(t.metadata),
}


def tool_to_proto(tool: Tool) -> tool_pb2.Tool:
    return tool_pb2.Tool(
        name=f"tools/{tool.id}",
        id=tool.id,
        tool_name=tool.name,
        description=tool.description,
        tool_type=TOOL_TYPE_TO_PROTO.get(tool.tool_type, tool_pb2.TOOL_TYPE_UNSPECIFIED),
        source_type=(
            tool_pb2.SOURCE_TYPE_PYTHON
            if tool.source_type == "python"
            else tool_pb2.SOURCE_TYPE_UNSPECIFIED
        ),
        source_code=tool.source_code or "",
        json_schema=to_struct(tool.json_schema),
        tags=tool.tags,
        return_char_limit=tool.return_char_limit,
        pip_requirements=[
            tool_pb2.PipRequirement(name=r["name"], version=r.get("version", ""))
            for r in tool.pip_requirements
        ],
        default_requires_approval=tool.default_requires_approval,
        metadata=to_struct(tool.metadata_),
        create_time=timestamp(tool.created_at),
        update_time=timestamp(tool.updated_at),
        etag=etag_of(tool.version),
    )


def tool_id_of(name: str, field: str) -> str:
    return resource_id(name, "tools", IdPrefix.TOOL, field)


def tool_values(tool: tool_pb2.Tool) -> dict[str, Any]:
    return {name: read(tool) for name, read in TOOL_READERS.items()}


class ToolServicer(tool_service_pb2_grpc.ToolServiceServicer):
    def __init__(self, app: Application) -> None:
        self.app = app

    @property
    def service(self) -> ToolService:
        return self.app.services.tools

    async def CreateTool(
        self, request: tool_service_pb2.CreateToolRequest, context: grpc.aio.ServicerContext
    ) -> tool_pb2.Tool:
        tool = await self.service.create(
            current_caller(), tool_values(request.tool), request.request_id
        )
        return tool_to_proto(tool)

    async def UpsertTool(
        self, request: tool_service_pb2.UpsertToolRequest, context: grpc.aio.ServicerContext
    ) -> tool_pb2.Tool:
        return tool_to_proto(await self.service.upsert(current_caller(), tool_values(request.tool)))

    async def GetTool(
        self, request: tool_service_pb2.GetToolRequest, context: grpc.aio.ServicerContext
    ) -> tool_pb2.Tool:
        return tool_to_proto(
            await self.service.get(current_caller(), tool_id_of(request.name, "name"))
        )

    async def ListTools(
        self, request: tool_service_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> tool_service_pb2.ListToolsResponse:
        tools, token = await self.service.list_page(
            current_caller(),
            tool_name=request.tool_name,
            tags=list(request.tags),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return tool_service_pb2.ListToolsResponse(
            tools=[tool_to_proto(tool) for tool in tools], next_page_token=token
        )

    async def UpdateTool(
        self, request: tool_service_pb2.UpdateToolRequest, context: grpc.aio.ServicerContext
    ) -> tool_pb2.Tool:
        tool_id = tool_id_of(request.tool.name, "tool.name")
        changes = changed_fields(request.tool, request.update_mask, TOOL_READERS)
        tool = await self.service.update(current_caller(), tool_id, changes, request.tool.etag)
        return tool_to_proto(tool)

    async def DeleteTool(
        self, request: tool_service_pb2.DeleteToolRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.service.delete(current_caller(), tool_id_of(request.name, "name"), request.etag)
        return empty_pb2.Empty()
