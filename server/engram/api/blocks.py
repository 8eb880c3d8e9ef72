"""BlockService: standalone core memory blocks."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from engram.api.convert import changed_fields, from_struct, resource_id, timestamp, to_struct
from engram.rpc.application import Application
from engram.rpc.context import current_caller
from engram.services.blocks import BlockService, BlockView
from engram.services.common import etag_of
from engram.store.ids import IdPrefix
from engram.v1 import block_pb2, block_service_pb2, block_service_pb2_grpc

BLOCK_READERS: dict[str, Any] = {
    "label": lambda b: b.label,
    "value": lambda b: b.value,
    "limit": lambda b: b.limit,
    "description": lambda b: b.description,
    "read_only": lambda b: b.read_only,
    "metadata": lambda b: from_struct(b.metadata),
}


def block_name(block_id: str) -> str:
    return f"blocks/{block_id}"


def block_to_proto(view: BlockView) -> block_pb2.Block:
    block = view.block
    return block_pb2.Block(
        name=block_name(block.id),
        id=block.id,
        label=block.label,
        value=block.value,
        limit=block.char_limit,
        description=block.description,
        read_only=block.read_only,
        metadata=to_struct(block.metadata_),
        agents=[f"agents/{agent_id}" for agent_id in view.agent_ids],
        create_time=timestamp(block.created_at),
        update_time=timestamp(block.updated_at),
        etag=etag_of(block.version),
    )


def block_values(block: block_pb2.Block) -> dict[str, Any]:
    """Every settable field of a block being created."""
    return {name: read(block) for name, read in BLOCK_READERS.items()}


def block_id_of(name: str, field: str) -> str:
    return resource_id(name, "blocks", IdPrefix.BLOCK, field)


class BlockServicer(block_service_pb2_grpc.BlockServiceServicer):
    def __init__(self, app: Application) -> None:
        self.app = app

    @property
    def service(self) -> BlockService:
        return self.app.services.blocks

    async def CreateBlock(
        self, request: block_service_pb2.CreateBlockRequest, context: grpc.aio.ServicerContext
    ) -> block_pb2.Block:
        view = await self.service.create(
            current_caller(), block_values(request.block), request.request_id
        )
        return block_to_proto(view)

    async def GetBlock(
        self, request: block_service_pb2.GetBlockRequest, context: grpc.aio.ServicerContext
    ) -> block_pb2.Block:
        view = await self.service.get(current_caller(), block_id_of(request.name, "name"))
        return block_to_proto(view)

    async def ListBlocks(
        self, request: block_service_pb2.ListBlocksRequest, context: grpc.aio.ServicerContext
    ) -> block_service_pb2.ListBlocksResponse:
        views, token = await self.service.list_page(
            current_caller(),
            label=request.label,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return block_service_pb2.ListBlocksResponse(
            blocks=[block_to_proto(view) for view in views], next_page_token=token
        )

    async def UpdateBlock(
        self, request: block_service_pb2.UpdateBlockRequest, context: grpc.aio.ServicerContext
    ) -> block_pb2.Block:
        block_id = block_id_of(request.block.name, "block.name")
        changes = changed_fields(request.block, request.update_mask, BLOCK_READERS)
        view = await self.service.update(current_caller(), block_id, changes, request.block.etag)
        return block_to_proto(view)

    async def DeleteBlock(
        self, request: block_service_pb2.DeleteBlockRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.service.delete(
            current_caller(), block_id_of(request.name, "name"), request.etag, request.force
        )
        return empty_pb2.Empty()
