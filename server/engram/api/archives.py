"""ArchiveService: archives, their agents, and their passages (archival memory)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from engram.api.convert import (
    changed_fields,
    from_struct,
    nested_id,
    resource_id,
    timestamp,
    to_struct,
)
from engram.rpc.application import Application
from engram.rpc.context import current_caller
from engram.services.archives import ArchiveService, ArchiveView
from engram.services.common import etag_of
from engram.services.errors import InvalidArgumentError
from engram.services.passages import NewPassage, Parent, PassageQuery, PassageService
from engram.store.ids import IdPrefix, is_valid_id
from engram.store.models import Passage
from engram.v1 import archive_pb2, archive_service_pb2, archive_service_pb2_grpc

ARCHIVE_READERS: dict[str, Any] = {
    "display_name": lambda a: a.display_name,
    "description": lambda a: a.description,
    "embedding": lambda a: a.embedding,
}


def archive_to_proto(view: ArchiveView) -> archive_pb2.Archive:
    archive = view.archive
    return archive_pb2.Archive(
        name=f"archives/{archive.id}",
        id=archive.id,
        display_name=archive.name,
        description=archive.description,
        embedding=archive.embedding or "",
        agents=[f"agents/{agent_id}" for agent_id in view.agent_ids],
        default_for=f"agents/{view.default_for}" if view.default_for else "",
        passage_count=view.passage_count,
        create_time=timestamp(archive.created_at),
        update_time=timestamp(archive.updated_at),
        etag=etag_of(archive.version),
    )


def passage_to_proto(passage: Passage) -> archive_pb2.Passage:
    return archive_pb2.Passage(
        name=f"archives/{passage.archive_id}/passages/{passage.id}",
        id=passage.id,
        text=passage.text,
        tags=list(passage.tags),
        metadata=to_struct(passage.metadata_),
        embedding=passage.embedding_model or "",
        create_time=timestamp(passage.created_at),
    )


def new_passage(passage: archive_pb2.Passage) -> NewPassage:
    return NewPassage(passage.text, list(passage.tags), from_struct(passage.metadata))


def archive_id_of(name: str, field: str) -> str:
    return resource_id(name, "archives", IdPrefix.ARCHIVE, field)


def agent_id_of(name: str, field: str) -> str:
    return resource_id(name, "agents", IdPrefix.AGENT, field)


def passage_ids_of(name: str) -> tuple[str, str]:
    return nested_id(name, "archives", IdPrefix.ARCHIVE, "passages", IdPrefix.PASSAGE, "name")


def parent_of(name: str) -> Parent:
    """``archives/{archive}`` or ``agents/{agent}``."""
    collection, _, tail = name.partition("/")
    if collection == "archives" and is_valid_id(tail, IdPrefix.ARCHIVE):
        return Parent(archive_id=tail)
    if collection == "agents" and is_valid_id(tail, IdPrefix.AGENT):
        return Parent(agent_id=tail)
    if not name:
        raise InvalidArgumentError.field("parent", "is required")
    raise InvalidArgumentError.field(
        "parent", "must be archives/archive-<uuid4> or agents/agent-<uuid4>"
    )


def time_of(request: Message, field: str) -> datetime | None:
    if not request.HasField(field):
        return None
    moment: datetime = getattr(request, field).ToDatetime(tzinfo=UTC)
    return moment


class ArchiveServicer(archive_service_pb2_grpc.ArchiveServiceServicer):
    def __init__(self, app: Application) -> None:
        self.app = app

    @property
    def archives(self) -> ArchiveService:
        return self.app.services.archives

    @property
    def passages(self) -> PassageService:
        return self.app.services.passages

    # --- archives -------------------------------------------------------------------------

    async def CreateArchive(
        self, request: archive_service_pb2.CreateArchiveRequest, context: grpc.aio.ServicerContext
    ) -> archive_pb2.Archive:
        values = {name: read(request.archive) for name, read in ARCHIVE_READERS.items()}
        view = await self.archives.create(current_caller(), values, request.request_id)
        return archive_to_proto(view)

    async def GetArchive(
        self, request: archive_service_pb2.GetArchiveRequest, context: grpc.aio.ServicerContext
    ) -> archive_pb2.Archive:
        view = await self.archives.get(current_caller(), archive_id_of(request.name, "name"))
        return archive_to_proto(view)

    async def ListArchives(
        self, request: archive_service_pb2.ListArchivesRequest, context: grpc.aio.ServicerContext
    ) -> archive_service_pb2.ListArchivesResponse:
        views, token = await self.archives.list_page(
            current_caller(),
            agent_id=agent_id_of(request.agent, "agent") if request.agent else "",
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return archive_service_pb2.ListArchivesResponse(
            archives=[archive_to_proto(view) for view in views], next_page_token=token
        )

    async def UpdateArchive(
        self, request: archive_service_pb2.UpdateArchiveRequest, context: grpc.aio.ServicerContext
    ) -> archive_pb2.Archive:
        archive_id = archive_id_of(request.archive.name, "archive.name")
        changes = changed_fields(request.archive, request.update_mask, ARCHIVE_READERS)
        view = await self.archives.update(
            current_caller(), archive_id, changes, request.archive.etag
        )
        return archive_to_proto(view)

    async def DeleteArchive(
        self, request: archive_service_pb2.DeleteArchiveRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.archives.delete(
            current_caller(), archive_id_of(request.name, "name"), request.etag, request.force
        )
        return empty_pb2.Empty()

    async def AttachArchive(
        self, request: archive_service_pb2.AttachArchiveRequest, context: grpc.aio.ServicerContext
    ) -> archive_pb2.Archive:
        view = await self.archives.attach(
            current_caller(),
            archive_id_of(request.archive, "archive"),
            agent_id_of(request.agent, "agent"),
        )
        return archive_to_proto(view)

    async def DetachArchive(
        self, request: archive_service_pb2.DetachArchiveRequest, context: grpc.aio.ServicerContext
    ) -> archive_pb2.Archive:
        view = await self.archives.detach(
            current_caller(),
            archive_id_of(request.archive, "archive"),
            agent_id_of(request.agent, "agent"),
        )
        return archive_to_proto(view)

    # --- passages -------------------------------------------------------------------------

    async def CreatePassage(
        self, request: archive_service_pb2.CreatePassageRequest, context: grpc.aio.ServicerContext
    ) -> archive_pb2.Passage:
        passage = await self.passages.create(
            current_caller(),
            parent_of(request.parent),
            new_passage(request.passage),
            request.request_id,
        )
        return passage_to_proto(passage)

    async def BatchCreatePassages(
        self,
        request: archive_service_pb2.BatchCreatePassagesRequest,
        context: grpc.aio.ServicerContext,
    ) -> archive_service_pb2.BatchCreatePassagesResponse:
        stored = await self.passages.batch_create(
            current_caller(),
            parent_of(request.parent),
            [new_passage(passage) for passage in request.passages],
            request.request_id,
        )
        return archive_service_pb2.BatchCreatePassagesResponse(
            passages=[passage_to_proto(passage) for passage in stored]
        )

    async def GetPassage(
        self, request: archive_service_pb2.GetPassageRequest, context: grpc.aio.ServicerContext
    ) -> archive_pb2.Passage:
        archive_id, passage_id = passage_ids_of(request.name)
        return passage_to_proto(await self.passages.get(current_caller(), archive_id, passage_id))

    async def ListPassages(
        self, request: archive_service_pb2.ListPassagesRequest, context: grpc.aio.ServicerContext
    ) -> archive_service_pb2.ListPassagesResponse:
        passages, token = await self.passages.list_page(
            current_caller(),
            parent_of(request.parent),
            page_size=request.page_size,
            page_token=request.page_token,
            newest_first=request.newest_first,
        )
        return archive_service_pb2.ListPassagesResponse(
            passages=[passage_to_proto(passage) for passage in passages], next_page_token=token
        )

    async def DeletePassage(
        self, request: archive_service_pb2.DeletePassageRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        archive_id, passage_id = passage_ids_of(request.name)
        await self.passages.delete(current_caller(), archive_id, passage_id)
        return empty_pb2.Empty()

    async def SearchPassages(
        self, request: archive_service_pb2.SearchPassagesRequest, context: grpc.aio.ServicerContext
    ) -> archive_service_pb2.SearchPassagesResponse:
        hits = await self.passages.search(
            current_caller(),
            parent_of(request.parent),
            PassageQuery(
                query=request.query,
                top_k=request.top_k,
                tags=list(request.tags),
                match_all_tags=request.match_all_tags,
                start=time_of(request, "start_time"),
                end=time_of(request, "end_time"),
            ),
        )
        return archive_service_pb2.SearchPassagesResponse(
            results=[
                archive_service_pb2.SearchPassagesResponse.Result(
                    passage=passage_to_proto(hit.passage), score=hit.score
                )
                for hit in hits
            ]
        )
