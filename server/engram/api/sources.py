"""SourceService: data sources, file uploads and ingestion progress."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from engram.api.convert import changed_fields, nested_id, resource_id, timestamp
from engram.rpc.application import Application
from engram.rpc.context import current_caller
from engram.services.common import etag_of
from engram.services.errors import InvalidArgumentError
from engram.services.sources import SourceService, SourceView, UploadHeader
from engram.store.ids import IdPrefix
from engram.store.models import SourceFile
from engram.v1 import source_pb2, source_service_pb2, source_service_pb2_grpc

SOURCE_READERS: dict[str, Any] = {
    "display_name": lambda s: s.display_name,
    "description": lambda s: s.description,
}

FILE_STATES = {
    "queued": source_pb2.File.STATE_QUEUED,
    "parsing": source_pb2.File.STATE_PARSING,
    "embedding": source_pb2.File.STATE_EMBEDDING,
    "completed": source_pb2.File.STATE_COMPLETED,
    "failed": source_pb2.File.STATE_FAILED,
}


def source_name(source_id: str) -> str:
    return f"sources/{source_id}"


def source_to_proto(view: SourceView) -> source_pb2.Source:
    source = view.source
    return source_pb2.Source(
        name=source_name(source.id),
        id=source.id,
        display_name=source.name,
        description=source.description,
        embedding=source.embedding,
        agents=[f"agents/{agent_id}" for agent_id in view.agent_ids],
        file_count=view.file_count,
        create_time=timestamp(source.created_at),
        update_time=timestamp(source.updated_at),
        etag=etag_of(source.version),
    )


def file_to_proto(file: SourceFile, *, with_text: bool = False) -> source_pb2.File:
    return source_pb2.File(
        name=f"{source_name(file.source_id)}/files/{file.id}",
        id=file.id,
        source=source_name(file.source_id),
        file_name=file.file_name,
        media_type=file.media_type,
        size_bytes=file.size_bytes,
        state=FILE_STATES[file.status],
        error=file.error,
        chunks_total=file.chunks_total,
        chunks_done=file.chunks_done,
        page_count=file.page_count,
        text=(file.text or "") if with_text else "",
        create_time=timestamp(file.created_at),
        update_time=timestamp(file.updated_at),
        end_time=timestamp(file.completed_at),
    )


def source_id_of(name: str, field: str) -> str:
    return resource_id(name, "sources", IdPrefix.SOURCE, field)


def file_ids_of(name: str, field: str) -> tuple[str, str]:
    return nested_id(name, "sources", IdPrefix.SOURCE, "files", IdPrefix.FILE, field)


async def upload_data(
    requests: AsyncIterator[source_service_pb2.UploadFileRequest],
) -> AsyncIterator[bytes]:
    """The content pieces that follow the header."""
    async for request in requests:
        if request.WhichOneof("part") != "data":
            raise InvalidArgumentError.field(
                "header", "only the first message of an upload may carry a header"
            )
        yield request.data


class SourceServicer(source_service_pb2_grpc.SourceServiceServicer):
    def __init__(self, app: Application) -> None:
        self.app = app

    @property
    def service(self) -> SourceService:
        return self.app.services.sources

    async def CreateSource(
        self, request: source_service_pb2.CreateSourceRequest, context: grpc.aio.ServicerContext
    ) -> source_pb2.Source:
        values = {name: read(request.source) for name, read in SOURCE_READERS.items()}
        values["embedding"] = request.source.embedding
        view = await self.service.create(current_caller(), values, request.request_id)
        return source_to_proto(view)

    async def GetSource(
        self, request: source_service_pb2.GetSourceRequest, context: grpc.aio.ServicerContext
    ) -> source_pb2.Source:
        view = await self.service.get(current_caller(), source_id_of(request.name, "name"))
        return source_to_proto(view)

    async def ListSources(
        self, request: source_service_pb2.ListSourcesRequest, context: grpc.aio.ServicerContext
    ) -> source_service_pb2.ListSourcesResponse:
        views, token = await self.service.list_page(
            current_caller(), page_size=request.page_size, page_token=request.page_token
        )
        return source_service_pb2.ListSourcesResponse(
            sources=[source_to_proto(view) for view in views], next_page_token=token
        )

    async def UpdateSource(
        self, request: source_service_pb2.UpdateSourceRequest, context: grpc.aio.ServicerContext
    ) -> source_pb2.Source:
        source_id = source_id_of(request.source.name, "source.name")
        changes = changed_fields(request.source, request.update_mask, SOURCE_READERS)
        view = await self.service.update(current_caller(), source_id, changes, request.source.etag)
        return source_to_proto(view)

    async def DeleteSource(
        self, request: source_service_pb2.DeleteSourceRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.service.delete(
            current_caller(), source_id_of(request.name, "name"), request.etag
        )
        return empty_pb2.Empty()

    async def UploadFile(
        self,
        request_iterator: AsyncIterator[source_service_pb2.UploadFileRequest],
        context: grpc.aio.ServicerContext,
    ) -> source_pb2.File:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgumentError.field(
                "header", "the first message of an upload must carry the header"
            )
        header = UploadHeader(
            source_id=source_id_of(first.header.parent, "header.parent"),
            file_name=first.header.file_name,
            media_type=first.header.media_type,
            request_id=first.header.request_id,
        )
        file = await self.service.upload(
            current_caller(),
            header,
            upload_data(requests),
            max_bytes=self.app.settings.max_upload_bytes,
        )
        return file_to_proto(file)

    async def GetFile(
        self, request: source_service_pb2.GetFileRequest, context: grpc.aio.ServicerContext
    ) -> source_pb2.File:
        source_id, file_id = file_ids_of(request.name, "name")
        with_text = request.view == source_pb2.FILE_VIEW_FULL
        file = await self.service.get_file(
            current_caller(), source_id, file_id, with_text=with_text
        )
        return file_to_proto(file, with_text=with_text)

    async def ListFiles(
        self, request: source_service_pb2.ListFilesRequest, context: grpc.aio.ServicerContext
    ) -> source_service_pb2.ListFilesResponse:
        files, token = await self.service.list_files(
            current_caller(),
            source_id_of(request.parent, "parent"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return source_service_pb2.ListFilesResponse(
            files=[file_to_proto(file) for file in files], next_page_token=token
        )

    async def DeleteFile(
        self, request: source_service_pb2.DeleteFileRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        source_id, file_id = file_ids_of(request.name, "name")
        await self.service.delete_file(current_caller(), source_id, file_id)
        return empty_pb2.Empty()

    async def WatchFile(
        self, request: source_service_pb2.WatchFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[source_service_pb2.FileProgress]:
        source_id, file_id = file_ids_of(request.name, "name")
        async for file in self.service.watch_file(current_caller(), source_id, file_id):
            yield source_service_pb2.FileProgress(file=file_to_proto(file))

    async def AttachSource(
        self, request: source_service_pb2.AttachSourceRequest, context: grpc.aio.ServicerContext
    ) -> source_pb2.Source:
        view = await self.service.attach(
            current_caller(),
            source_id_of(request.name, "name"),
            resource_id(request.agent, "agents", IdPrefix.AGENT, "agent"),
        )
        return source_to_proto(view)

    async def DetachSource(
        self, request: source_service_pb2.DetachSourceRequest, context: grpc.aio.ServicerContext
    ) -> source_pb2.Source:
        view = await self.service.detach(
            current_caller(),
            source_id_of(request.name, "name"),
            resource_id(request.agent, "agents", IdPrefix.AGENT, "agent"),
        )
        return source_to_proto(view)
