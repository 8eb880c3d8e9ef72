"""SourceService through the generated stubs, on both engines, with the real local embedding model.

Covers source CRUD and isolation, uploads of every supported type (fixtures
built here, a PDF written by hand), uploads larger than one gRPC message,
the size limit, progress events, a corrupt file next to a good one, passages
found by meaning, an ingestion outliving its watcher, recovery of a file a
crashed server left behind, deletions and attachments.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from sqlalchemy import func, select, update

from engram.adapters.embeddings.registry import EmbeddingRegistry
from engram.config.settings import Settings
from engram.rpc.errors import reason_of, unpack_detail
from engram.services.ingestion import runner as runner_module
from engram.services.sources import SourceService
from engram.store.database import Database
from engram.store.models import Archive, Passage, Source, SourceFile
from engram.store.passage_search import NearestQuery, VectorIndexes, nearest_passages
from engram.store.types import utc_now
from engram.v1 import (
    agent_pb2,
    agent_service_pb2,
    source_pb2,
    source_service_pb2,
    source_service_pb2_grpc,
)
from support.api import ApiHarness, Client, rich_status, running_api
from support.documents import long_document, pdf_document

File = source_pb2.File
MIB = 1024 * 1024
STATE_ORDER = [
    File.STATE_QUEUED,
    File.STATE_PARSING,
    File.STATE_EMBEDDING,
    File.STATE_COMPLETED,
]


# --- helpers ---------------------------------------------------------------------------


async def fails(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    bad_request = unpack_detail(rich_status(error), error_details_pb2.BadRequest)
    assert bad_request is not None, f"no BadRequest in {error.details()}"
    return {v.field: v.description for v in bad_request.field_violations}


async def create_source(client: Client, name: str = "handbook", **fields: Any) -> source_pb2.Source:
    source: source_pb2.Source = await client.sources.CreateSource(
        source_service_pb2.CreateSourceRequest(
            source=source_pb2.Source(display_name=name, **fields)
        )
    )
    return source


def upload_messages(
    parent: str, file_name: str, pieces: Iterable[bytes], media_type: str = ""
) -> AsyncIterator[source_service_pb2.UploadFileRequest]:
    async def messages() -> AsyncIterator[source_service_pb2.UploadFileRequest]:
        yield source_service_pb2.UploadFileRequest(
            header=source_service_pb2.UploadFileHeader(
                parent=parent, file_name=file_name, media_type=media_type
            )
        )
        for piece in pieces:
            yield source_service_pb2.UploadFileRequest(data=piece)

    return messages()


async def upload(
    client: Client, source: source_pb2.Source, file_name: str, data: bytes, media_type: str = ""
) -> File:
    pieces = [data[start : start + MIB] for start in range(0, len(data), MIB)]
    file: File = await client.sources.UploadFile(
        upload_messages(source.name, file_name, pieces, media_type)
    )
    return file


async def watch(client: Client, file: File) -> list[File]:
    """Every progress event of the file until its stream ends."""
    events: list[File] = []
    async for progress in client.sources.WatchFile(
        source_service_pb2.WatchFileRequest(name=file.name)
    ):
        events.append(progress.file)
    return events


async def ingested(client: Client, file: File) -> File:
    events = await watch(client, file)
    assert events and events[-1].state in (File.STATE_COMPLETED, File.STATE_FAILED)
    return events[-1]


async def full_text(client: Client, file: File) -> str:
    got: File = await client.sources.GetFile(
        source_service_pb2.GetFileRequest(name=file.name, view=source_pb2.FILE_VIEW_FULL)
    )
    return got.text


async def passages_of(database: Database, organization_id: str, file_id: str) -> list[Passage]:
    async with database.read(organization_id) as session:
        rows = await session.scalars(
            select(Passage).where(Passage.file_id == file_id).order_by(Passage.created_at)
        )
        return list(rows.all())


# --- sources ---------------------------------------------------------------------------


async def test_source_crud_and_isolation(api: ApiHarness) -> None:
    request_id = str(uuid.uuid4())
    created = await api.org_a.sources.CreateSource(
        source_service_pb2.CreateSourceRequest(
            source=source_pb2.Source(display_name="manuals", description="product manuals"),
            request_id=request_id,
        )
    )
    assert created.name == f"sources/{created.id}"
    assert created.embedding == "local/all-minilm-l6-v2"
    assert created.file_count == 0 and not created.agents
    again = await api.org_a.sources.CreateSource(
        source_service_pb2.CreateSourceRequest(
            source=source_pb2.Source(display_name="manuals"), request_id=request_id
        )
    )
    assert again.id == created.id

    duplicate = await fails(create_source(api.org_a, "manuals"))
    assert duplicate.code() == grpc.StatusCode.ALREADY_EXISTS
    missing_name = await fails(create_source(api.org_a, " "))
    assert violations(missing_name) == {"source.display_name": "is required"}
    unknown_model = await fails(create_source(api.org_a, "other", embedding="local/nope"))
    assert unknown_model.code() == grpc.StatusCode.FAILED_PRECONDITION

    updated = await api.org_a.sources.UpdateSource(
        source_service_pb2.UpdateSourceRequest(
            source=source_pb2.Source(
                name=created.name, description="user manuals", etag=created.etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    )
    assert updated.description == "user manuals" and updated.display_name == "manuals"
    assert updated.etag != created.etag
    stale = await fails(
        api.org_a.sources.UpdateSource(
            source_service_pb2.UpdateSourceRequest(
                source=source_pb2.Source(name=created.name, description="x", etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            )
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    immutable = await fails(
        api.org_a.sources.UpdateSource(
            source_service_pb2.UpdateSourceRequest(
                source=source_pb2.Source(name=created.name, embedding="local/x"),
                update_mask=field_mask_pb2.FieldMask(paths=["embedding"]),
            )
        )
    )
    assert immutable.code() == grpc.StatusCode.INVALID_ARGUMENT

    second = await create_source(api.org_a, "notes")
    first_page = await api.org_a.sources.ListSources(
        source_service_pb2.ListSourcesRequest(page_size=1)
    )
    assert [s.id for s in first_page.sources] == [created.id] and first_page.next_page_token
    next_page = await api.org_a.sources.ListSources(
        source_service_pb2.ListSourcesRequest(page_size=1, page_token=first_page.next_page_token)
    )
    assert [s.id for s in next_page.sources] == [second.id]

    # Organization B sees none of it.
    hidden = await fails(
        api.org_b.sources.GetSource(source_service_pb2.GetSourceRequest(name=created.name))
    )
    assert hidden.code() == grpc.StatusCode.NOT_FOUND
    listed = await api.org_b.sources.ListSources(source_service_pb2.ListSourcesRequest())
    assert list(listed.sources) == []
    foreign_upload = await fails(upload(api.org_b, created, "a.txt", b"hello"))
    assert foreign_upload.code() == grpc.StatusCode.NOT_FOUND
    foreign_delete = await fails(
        api.org_b.sources.DeleteSource(source_service_pb2.DeleteSourceRequest(name=created.name))
    )
    assert foreign_delete.code() == grpc.StatusCode.NOT_FOUND

    await api.org_a.sources.DeleteSource(source_service_pb2.DeleteSourceRequest(name=second.name))
    gone = await fails(
        api.org_a.sources.GetSource(source_service_pb2.GetSourceRequest(name=second.name))
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND


# --- ingestion -------------------------------------------------------------------------


async def test_every_file_type_is_ingested(api: ApiHarness) -> None:
    source = await create_source(api.org_a)
    html = (
        "<html><head><title>Guide</title><style>body { color: red }</style></head><body>"
        "<h1>Kettle guide</h1><script>var secret = 1;</script>"
        "<p>Fill the kettle &amp; switch it on.</p><p>Wait for the click.</p></body></html>"
    )
    csv_text = "name,city\nAlice,Lisbon\nBob,Oslo\n"
    fixtures = {
        "notes.txt": ("", b"Plain text about tea.\n\nSecond paragraph about coffee."),
        "readme.md": ("", b"# Title\n\nSome *markdown* text about gardens."),
        "guide.html": ("", html.encode()),
        "data.json": ("", json.dumps({"planet": "Mars", "moons": ["Phobos", "Deimos"]}).encode()),
        "people.csv": ("", csv_text.encode()),
        "report.pdf": (
            "",
            pdf_document([["First page about rivers"], ["Second page about hills"]]),
        ),
        "untyped.bin": ("text/plain; charset=utf-8", b"Typed by the header, not the name."),
    }
    uploaded = {
        file_name: await upload(api.org_a, source, file_name, data, media_type)
        for file_name, (media_type, data) in fixtures.items()
    }
    assert uploaded["report.pdf"].media_type == "application/pdf"
    assert uploaded["people.csv"].media_type == "text/csv"
    assert uploaded["untyped.bin"].media_type == "text/plain"
    assert uploaded["notes.txt"].size_bytes == len(fixtures["notes.txt"][1])
    for file in uploaded.values():
        assert file.state == File.STATE_QUEUED
        done = await ingested(api.org_a, file)
        assert done.state == File.STATE_COMPLETED, (file.file_name, done.error)
        assert done.chunks_total >= 1 and done.chunks_done == done.chunks_total
        assert done.HasField("end_time")
        stored = await passages_of(api.database, api.org_a.caller.organization_id, file.id)
        assert len(stored) == done.chunks_total

    texts = {name: await full_text(api.org_a, file) for name, file in uploaded.items()}
    assert "Second paragraph about coffee." in texts["notes.txt"]
    assert "*markdown*" in texts["readme.md"]
    assert "Fill the kettle & switch it on." in texts["guide.html"]
    assert "secret" not in texts["guide.html"] and "color" not in texts["guide.html"]
    assert json.loads(texts["data.json"]) == {"planet": "Mars", "moons": ["Phobos", "Deimos"]}
    assert "\n  " in texts["data.json"]  # pretty-printed
    assert "name: Alice\ncity: Lisbon" in texts["people.csv"]
    assert "name: Bob\ncity: Oslo" in texts["people.csv"]
    assert "First page about rivers" in texts["report.pdf"]
    assert "Second page about hills" in texts["report.pdf"]
    pdf = await api.org_a.sources.GetFile(
        source_service_pb2.GetFileRequest(name=uploaded["report.pdf"].name)
    )
    assert pdf.page_count == 2 and pdf.text == ""  # the basic view leaves the text out

    listed = await api.org_a.sources.ListFiles(
        source_service_pb2.ListFilesRequest(parent=source.name, page_size=3)
    )
    assert [f.file_name for f in listed.files] == list(fixtures)[:3] and listed.next_page_token
    refreshed = await api.org_a.sources.GetSource(
        source_service_pb2.GetSourceRequest(name=source.name)
    )
    assert refreshed.file_count == len(fixtures)


async def test_chunk_positions_and_search_by_meaning(api: ApiHarness) -> None:
    source = await create_source(api.org_a)
    topics = [
        "Volcanoes erupt when molten rock rises through the crust and escapes as lava and ash.",
        "To bake bread, knead flour, water, yeast and salt, let the dough rise, then bake it.",
        "In chess, the knight moves in an L shape and can jump over other pieces.",
    ]
    # Each topic repeated into its own long paragraph, so that each becomes its own chunks.
    document = "\n\n".join(" ".join([topic] * 8) for topic in topics)
    file = await upload(api.org_a, source, "topics.txt", document.encode())
    done = await ingested(api.org_a, file)
    assert done.state == File.STATE_COMPLETED and done.chunks_total >= 3

    text = await full_text(api.org_a, file)
    organization = api.org_a.caller.organization_id
    stored = await passages_of(api.database, organization, file.id)
    assert sorted(p.metadata_["chunk"] for p in stored) == list(range(done.chunks_total))
    for passage in stored:
        assert text[passage.metadata_["start"] : passage.metadata_["end"]] == passage.text
        assert len(passage.text) <= 1000
        assert passage.embedding_dim == 384 and passage.embedding_model == source.embedding

    async with api.database.read(organization) as session:
        archive_id = await session.scalar(select(Source.archive_id).where(Source.id == source.id))
        kind = await session.scalar(select(Archive.kind).where(Archive.id == archive_id))
    assert archive_id is not None and kind == "source"
    embedder = EmbeddingRegistry({}).resolve(source.embedding)
    for query, expected in [("how do I make a loaf", "bake bread"), ("lava", "Volcanoes")]:
        vector = (await embedder.embed([query]))[0].tolist()
        async with api.database.read(organization) as session:
            found = await nearest_passages(
                session,
                NearestQuery(
                    embedding=vector, model=embedder.handle, archive_ids=[archive_id], top_k=1
                ),
            )
        assert found and expected in found[0].passage.text


async def test_upload_larger_than_one_message(api: ApiHarness) -> None:
    source = await create_source(api.org_a)
    data = long_document(8000).encode()[: 6 * MIB]
    assert len(data) == 6 * MIB
    # Held: the test only checks the transfer, not six megabytes of embeddings.
    async with api.services.sources.runner.held():
        file = await upload(api.org_a, source, "big.txt", data)
        assert file.size_bytes == 6 * MIB and file.state == File.STATE_QUEUED
        # Deleting a file whose ingestion is waiting cancels it.
        await api.org_a.sources.DeleteFile(source_service_pb2.DeleteFileRequest(name=file.name))
    gone = await fails(api.org_a.sources.GetFile(source_service_pb2.GetFileRequest(name=file.name)))
    assert gone.code() == grpc.StatusCode.NOT_FOUND


async def test_upload_over_the_limit_is_refused_at_once(
    settings: Settings, database: Database
) -> None:
    limited = settings.model_copy(update={"max_upload_bytes": MIB})
    async with running_api(limited, database) as api:
        source = await create_source(api.org_a)
        sent = 0

        def requests() -> Iterator[source_service_pb2.UploadFileRequest]:
            nonlocal sent
            header = source_service_pb2.UploadFileHeader(parent=source.name, file_name="a.txt")
            yield source_service_pb2.UploadFileRequest(header=header)
            # The client would send 64 times the limit; the server must end the call first.
            while sent < 64 * MIB:
                sent += 256 * 1024
                yield source_service_pb2.UploadFileRequest(data=b"x" * (256 * 1024))

        def upload_synchronously() -> grpc.RpcError:
            # The synchronous client: grpc.aio's can report a local INTERNAL instead of the
            # server's status when a write races the server ending the call
            # (grpc/grpc#36066), which would say nothing about the server.
            with grpc.insecure_channel(f"127.0.0.1:{api.server.port}") as channel:
                stub = source_service_pb2_grpc.SourceServiceStub(channel)
                metadata = (("authorization", f"Bearer {api.org_a.key}"),)
                with pytest.raises(grpc.RpcError) as caught:
                    stub.UploadFile(requests(), metadata=metadata, timeout=60)
                return caught.value

        error = await asyncio.to_thread(upload_synchronously)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sent < 64 * MIB
        assert reason_of(rich_status(error)) == "UPLOAD_TOO_LARGE"
        assert str(MIB) in violations(error)["data"]
        listed = await api.org_a.sources.ListFiles(
            source_service_pb2.ListFilesRequest(parent=source.name)
        )
        assert list(listed.files) == []


async def test_bad_uploads_are_refused_precisely(api: ApiHarness) -> None:
    source = await create_source(api.org_a)
    unknown_extension = await fails(upload(api.org_a, source, "tool.exe", b"MZ"))
    assert reason_of(rich_status(unknown_extension)) == "UNSUPPORTED_MEDIA_TYPE"
    assert "header.file_name" in violations(unknown_extension)
    unsupported = await fails(upload(api.org_a, source, "a.png", b"x", media_type="image/png"))
    assert reason_of(rich_status(unsupported)) == "UNSUPPORTED_MEDIA_TYPE"
    assert "header.media_type" in violations(unsupported)
    bad_name = await fails(upload(api.org_a, source, "a/b.txt", b"x"))
    assert "header.file_name" in violations(bad_name)

    async def no_header() -> AsyncIterator[source_service_pb2.UploadFileRequest]:
        yield source_service_pb2.UploadFileRequest(data=b"hello")

    headless = await fails(api.org_a.sources.UploadFile(no_header()))
    assert violations(headless).keys() == {"header"}

    await upload(api.org_a, source, "same.txt", b"one")
    twice = await fails(upload(api.org_a, source, "same.txt", b"two"))
    assert twice.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_watch_reports_progress_until_completed(api: ApiHarness) -> None:
    source = await create_source(api.org_a)
    async with api.services.sources.runner.held():
        file = await upload(api.org_a, source, "long.txt", long_document(100).encode())
        call = api.org_a.sources.WatchFile(source_service_pb2.WatchFileRequest(name=file.name))
        stream = aiter(call)
        first = (await anext(stream)).file
        assert first.state == File.STATE_QUEUED and first.chunks_done == 0
    events = [first, *[progress.file async for progress in stream]]
    assert await call.code() == grpc.StatusCode.OK
    states = [STATE_ORDER.index(event.state) for event in events]
    assert states == sorted(states) and events[-1].state == File.STATE_COMPLETED
    done_counts = [event.chunks_done for event in events]
    assert done_counts == sorted(done_counts)
    assert events[-1].chunks_total > 64  # more than one embedding batch
    assert events[-1].chunks_done == events[-1].chunks_total
    assert len(events) >= 2


async def test_corrupt_file_fails_alone(api: ApiHarness) -> None:
    source = await create_source(api.org_a)
    corrupt = await upload(
        api.org_a, source, "broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage"
    )
    bad_json = await upload(api.org_a, source, "broken.json", b'{"a": 1,\n "b": }')
    latin1 = await upload(api.org_a, source, "latin1.txt", "caf\xe9".encode("latin-1"))
    good = await upload(api.org_a, source, "good.txt", b"A perfectly fine file about owls.")
    failed_pdf = await ingested(api.org_a, corrupt)
    assert failed_pdf.state == File.STATE_FAILED
    assert "PDF" in failed_pdf.error and failed_pdf.chunks_done == 0
    failed_json = await ingested(api.org_a, bad_json)
    assert failed_json.state == File.STATE_FAILED
    assert "not valid JSON" in failed_json.error and "line 2" in failed_json.error
    failed_text = await ingested(api.org_a, latin1)
    assert failed_text.state == File.STATE_FAILED
    assert "not UTF-8" in failed_text.error and "offset 3" in failed_text.error
    completed = await ingested(api.org_a, good)
    assert completed.state == File.STATE_COMPLETED and completed.error == ""
    organization = api.org_a.caller.organization_id
    assert await passages_of(api.database, organization, corrupt.id) == []
    assert len(await passages_of(api.database, organization, good.id)) == 1


async def test_ingestion_outlives_its_watcher(api: ApiHarness) -> None:
    source = await create_source(api.org_a)
    async with api.services.sources.runner.held():
        file = await upload(api.org_a, source, "notes.md", long_document(10).encode())
        call = api.org_a.sources.WatchFile(source_service_pb2.WatchFileRequest(name=file.name))
        first = await anext(aiter(call))
        assert first.file.state == File.STATE_QUEUED
        call.cancel()
    # The uploader is gone; the file still completes.
    while True:
        current = await api.org_a.sources.GetFile(source_service_pb2.GetFileRequest(name=file.name))
        if current.state in (File.STATE_COMPLETED, File.STATE_FAILED):
            break
        await asyncio.sleep(0.05)
    assert current.state == File.STATE_COMPLETED
    assert current.chunks_done == current.chunks_total > 0


async def test_unfinished_files_are_resumed_by_another_server(api: ApiHarness) -> None:
    """A file a crashed process left half-ingested is taken over once its lease expires."""
    source = await create_source(api.org_a)
    organization = api.org_a.caller.organization_id
    other = SourceService(
        api.database, EmbeddingRegistry({}), VectorIndexes(api.database)
    )  # a second server process
    try:
        async with api.services.sources.runner.held():
            crashed = await upload(api.org_a, source, "crashed.txt", long_document(3).encode())
            exhausted = await upload(api.org_a, source, "again.txt", b"Interrupted too often.")

            async def simulate_crash(session: Any) -> None:
                expired = utc_now() - timedelta(minutes=5)
                await session.execute(
                    update(SourceFile)
                    .where(SourceFile.id == crashed.id)
                    .values(status="embedding", lease_expires_at=expired, attempts=1)
                )
                await session.execute(
                    update(SourceFile)
                    .where(SourceFile.id == exhausted.id)
                    .values(status="parsing", lease_expires_at=expired, attempts=3)
                )

            await api.database.run_transaction(simulate_crash, organization)
            other.start()
            resumed = await ingested(api.org_a, crashed)
            given_up = await ingested(api.org_a, exhausted)
        assert resumed.state == File.STATE_COMPLETED
        assert resumed.chunks_done == resumed.chunks_total > 0
        assert given_up.state == File.STATE_FAILED and "interrupted 3 times" in given_up.error
        async with api.database.read(organization) as session:
            attempts = await session.scalar(
                select(SourceFile.attempts).where(SourceFile.id == crashed.id)
            )
        assert attempts == 2
    finally:
        await other.close()


async def test_a_server_whose_clock_runs_ahead_takes_no_file_another_holds(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """File leases are judged and written on the database's clock, not on each server's own."""
    if not api.database.choice.is_postgresql:
        pytest.skip("SQLite serves one machine: its writers share one clock")
    source = await create_source(api.org_a)
    organization = api.org_a.caller.organization_id
    async with api.services.sources.runner.held():
        held = await upload(api.org_a, source, "held.txt", b"Being ingested elsewhere.")
        lapsed = await upload(api.org_a, source, "lapsed.txt", b"Its server died.")

        async def leases(session: Any) -> None:
            for file, ends in ((held, timedelta(minutes=1)), (lapsed, timedelta(minutes=-1))):
                await session.execute(
                    update(SourceFile)
                    .where(SourceFile.id == file.id)
                    .values(status="embedding", lease_expires_at=utc_now() + ends)
                )

        await api.database.run_transaction(leases, organization)
        monkeypatch.setattr(runner_module, "utc_now", lambda: utc_now() + timedelta(hours=1))
        other = SourceService(api.database, EmbeddingRegistry({}), VectorIndexes(api.database))
        try:
            # By its own clock both leases lapsed long ago; by the database's, one did.
            assert not await other.runner._claim(held.id, organization)
            assert await other.runner._claim(lapsed.id, organization)
        finally:
            await other.close()
        async with api.database.read(organization) as session:
            expires = await session.scalar(
                select(SourceFile.lease_expires_at).where(SourceFile.id == lapsed.id)
            )
        left = expires - utc_now()
        assert other.runner.options.lease - timedelta(seconds=3) < left  # not an hour more
        assert left < other.runner.options.lease + timedelta(seconds=2)


async def test_deleting_files_and_sources_removes_their_passages(api: ApiHarness) -> None:
    source = await create_source(api.org_a)
    organization = api.org_a.caller.organization_id
    first = await upload(api.org_a, source, "first.txt", long_document(3).encode())
    second = await upload(api.org_a, source, "second.txt", b"Second file, one chunk.")
    for file in (first, second):
        assert (await ingested(api.org_a, file)).state == File.STATE_COMPLETED
    assert len(await passages_of(api.database, organization, first.id)) > 1

    await api.org_a.sources.DeleteFile(source_service_pb2.DeleteFileRequest(name=first.name))
    assert await passages_of(api.database, organization, first.id) == []
    assert len(await passages_of(api.database, organization, second.id)) == 1
    missing = await fails(
        api.org_a.sources.GetFile(source_service_pb2.GetFileRequest(name=first.name))
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND

    async with api.database.read(organization) as session:
        archive_id = await session.scalar(select(Source.archive_id).where(Source.id == source.id))
    await api.org_a.sources.DeleteSource(source_service_pb2.DeleteSourceRequest(name=source.name))
    async with api.database.read(organization) as session:
        remaining = await session.scalar(
            select(func.count()).select_from(Passage).where(Passage.archive_id == archive_id)
        )
        archive = await session.get(Archive, archive_id)
        files = await session.scalar(
            select(func.count()).select_from(SourceFile).where(SourceFile.source_id == source.id)
        )
    assert remaining == 0 and archive is None and files == 0


async def test_attach_and_detach(api: ApiHarness) -> None:
    source = await create_source(api.org_a)
    agent = await api.org_a.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(display_name="reader"), include_base_tools=False
        )
    )
    attach = source_service_pb2.AttachSourceRequest(name=source.name, agent=agent.name)
    attached = await api.org_a.sources.AttachSource(attach)
    assert list(attached.agents) == [agent.name]
    again = await api.org_a.sources.AttachSource(attach)
    assert list(again.agents) == [agent.name]

    foreign = await fails(api.org_b.sources.AttachSource(attach))
    assert foreign.code() == grpc.StatusCode.NOT_FOUND
    no_agent = await fails(
        api.org_a.sources.AttachSource(
            source_service_pb2.AttachSourceRequest(
                name=source.name, agent=f"agents/agent-{uuid.uuid4()}"
            )
        )
    )
    assert no_agent.code() == grpc.StatusCode.NOT_FOUND
    malformed = await fails(
        api.org_a.sources.AttachSource(
            source_service_pb2.AttachSourceRequest(name=source.name, agent="agent-1")
        )
    )
    assert violations(malformed).keys() == {"agent"}

    detached = await api.org_a.sources.DetachSource(
        source_service_pb2.DetachSourceRequest(name=source.name, agent=agent.name)
    )
    assert list(detached.agents) == []


async def test_watch_of_unknown_or_foreign_file_is_not_found(api: ApiHarness) -> None:
    source = await create_source(api.org_a)
    file = await upload(api.org_a, source, "a.txt", b"Short text.")
    await ingested(api.org_a, file)
    for client, name in [
        (api.org_b, file.name),
        (api.org_a, f"{source.name}/files/file-{uuid.uuid4()}"),
    ]:
        error = await fails(watch(client, File(name=name)))
        assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_watched_file_deleted_ends_the_watch_with_not_found(api: ApiHarness) -> None:
    source = await create_source(api.org_a)
    async with api.services.sources.runner.held():
        file = await upload(api.org_a, source, "short.txt", b"Soon gone.")
        call = api.org_a.sources.WatchFile(source_service_pb2.WatchFileRequest(name=file.name))
        stream = aiter(call)
        assert (await anext(stream)).file.state == File.STATE_QUEUED
        await api.org_a.sources.DeleteFile(source_service_pb2.DeleteFileRequest(name=file.name))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await anext(stream)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


class GatedEmbedder:
    """The real local embedder, whose calls wait until the test opens the gate."""

    def __init__(self, inner: Any, gate: asyncio.Event, entered: asyncio.Event) -> None:
        self.inner = inner
        self.gate = gate
        self.entered = entered

    @property
    def handle(self) -> str:
        return str(self.inner.handle)

    @property
    def dimension(self) -> int | None:
        return self.inner.dimension  # type: ignore[no-any-return]

    async def embed(self, texts: Any) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await self.inner.embed(texts)


class GatedRegistry(EmbeddingRegistry):
    def __init__(self) -> None:
        super().__init__({})
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    def resolve(self, handle: str | None = None, *, dimensions: int | None = None) -> Any:
        return GatedEmbedder(
            super().resolve(handle, dimensions=dimensions), self.gate, self.entered
        )


async def test_shutdown_releases_a_running_ingestion_for_the_next_server(
    api: ApiHarness,
) -> None:
    source = await create_source(api.org_a)
    organization = api.org_a.caller.organization_id
    registry = GatedRegistry()
    stopping = SourceService(api.database, registry, VectorIndexes(api.database))
    try:
        async with api.services.sources.runner.held():
            file = await upload(api.org_a, source, "long.txt", long_document(5).encode())
            stopping.start()
            await registry.entered.wait()  # parsed, chunked, embedding its first batch
            current = await api.org_a.sources.GetFile(
                source_service_pb2.GetFileRequest(name=file.name)
            )
            assert current.state == File.STATE_EMBEDDING and current.chunks_total == 5
            await stopping.close()  # the server shuts down mid-file
            async with api.database.read(organization) as session:
                row = await session.get(SourceFile, file.id)
            assert row is not None
            assert (row.status, row.lease_expires_at, row.attempts) == ("queued", None, 0)
            # Free for the next server (here, the harness's) to take at once.
            assert await api.services.sources.runner.sweep() == 1
    finally:
        await stopping.close()
    done = await ingested(api.org_a, file)
    assert done.state == File.STATE_COMPLETED and done.chunks_done == 5
    assert len(await passages_of(api.database, organization, file.id)) == 5
