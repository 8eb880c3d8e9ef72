"""ArchiveService through the generated stubs, on both engines, with the real local model.

Archives: CRUD, field masks, etags, idempotent creates, pagination; agents'
default archives (created once, even by racing first inserts) and shared
archives; passages: single and batch inserts, listing, deletion; search by
meaning with tags, time ranges and several archives; and isolation between
organizations.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from sqlalchemy import func, select

from engram.rpc.errors import reason_of, unpack_detail
from engram.store.models import Passage
from engram.v1 import agent_pb2, agent_service_pb2, archive_pb2, archive_service_pb2
from support.api import ApiHarness, Client, rich_status

LOCAL = "local/all-minilm-l6-v2"
Svc = archive_service_pb2


async def fails(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    bad_request = unpack_detail(rich_status(error), error_details_pb2.BadRequest)
    assert bad_request is not None, f"no BadRequest in {error.details()}"
    return {v.field: v.description for v in bad_request.field_violations}


def reason(error: grpc.aio.AioRpcError) -> str:
    return str(reason_of(rich_status(error)))


async def create_archive(client: Client, name: str = "notes", **fields: Any) -> archive_pb2.Archive:
    archive: archive_pb2.Archive = await client.archives.CreateArchive(
        Svc.CreateArchiveRequest(archive=archive_pb2.Archive(display_name=name, **fields))
    )
    return archive


async def create_agent(client: Client, name: str = "pal", **fields: Any) -> str:
    agent = await client.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name=name, **fields))
    )
    return str(agent.name)


async def add(client: Client, parent: str, text: str, *tags: str) -> archive_pb2.Passage:
    passage: archive_pb2.Passage = await client.archives.CreatePassage(
        Svc.CreatePassageRequest(
            parent=parent, passage=archive_pb2.Passage(text=text, tags=list(tags))
        )
    )
    return passage


async def search(client: Client, parent: str, query: str, **options: Any) -> list[str]:
    response = await client.archives.SearchPassages(
        Svc.SearchPassagesRequest(parent=parent, query=query, **options)
    )
    return [result.passage.text for result in response.results]


async def passage_rows(api: ApiHarness) -> int:
    async with api.database.read(None, all_organizations=True) as session:
        return int(await session.scalar(select(func.count()).select_from(Passage)) or 0)


# --------------------------------------------------------------------------- archives


async def test_archive_create_get_update_delete_with_etags(api: ApiHarness) -> None:
    created = await create_archive(api.org_a, "Research", description="papers")
    assert created.name == f"archives/{created.id}" and created.id.startswith("archive-")
    assert (created.display_name, created.description) == ("Research", "papers")
    assert created.embedding == LOCAL  # the server's default, recorded for good
    assert (created.passage_count, list(created.agents), created.default_for) == (0, [], "")
    assert created.etag == '"1"'
    got = await api.org_a.archives.GetArchive(Svc.GetArchiveRequest(name=created.name))
    assert got == created

    updated = await api.org_a.archives.UpdateArchive(
        Svc.UpdateArchiveRequest(
            archive=archive_pb2.Archive(
                name=created.name, display_name="Papers", etag=created.etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    assert (updated.display_name, updated.description, updated.etag) == ("Papers", "papers", '"2"')

    stale = await fails(
        api.org_a.archives.UpdateArchive(
            Svc.UpdateArchiveRequest(
                archive=archive_pb2.Archive(name=created.name, description="x", etag=created.etag)
            )
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED and reason(stale) == "CONCURRENT_UPDATE"

    model_change = await fails(
        api.org_a.archives.UpdateArchive(
            Svc.UpdateArchiveRequest(
                archive=archive_pb2.Archive(name=created.name, embedding="openai/other"),
                update_mask=field_mask_pb2.FieldMask(paths=["embedding"]),
            )
        )
    )
    assert model_change.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "archive.embedding" in violations(model_change)

    stale_delete = await fails(
        api.org_a.archives.DeleteArchive(Svc.DeleteArchiveRequest(name=created.name, etag='"1"'))
    )
    assert stale_delete.code() == grpc.StatusCode.ABORTED
    await api.org_a.archives.DeleteArchive(Svc.DeleteArchiveRequest(name=created.name, etag='"2"'))
    gone = await fails(api.org_a.archives.GetArchive(Svc.GetArchiveRequest(name=created.name)))
    assert gone.code() == grpc.StatusCode.NOT_FOUND


async def test_create_archive_is_idempotent_per_request_id(api: ApiHarness) -> None:
    request = Svc.CreateArchiveRequest(
        archive=archive_pb2.Archive(display_name="once"), request_id=str(uuid.uuid4())
    )
    first = await api.org_a.archives.CreateArchive(request)
    again = await api.org_a.archives.CreateArchive(request)
    assert again.name == first.name
    listed = await api.org_a.archives.ListArchives(Svc.ListArchivesRequest())
    assert [a.name for a in listed.archives] == [first.name]


async def test_archives_are_listed_in_pages(api: ApiHarness) -> None:
    names = [(await create_archive(api.org_a, f"a{i}")).name for i in range(5)]
    pages: list[list[str]] = []
    token = ""
    while True:
        response = await api.org_a.archives.ListArchives(
            Svc.ListArchivesRequest(page_size=2, page_token=token)
        )
        pages.append([a.name for a in response.archives])
        token = response.next_page_token
        if not token:
            break
    assert pages == [names[0:2], names[2:4], names[4:5]]
    bad = await fails(
        api.org_a.archives.ListArchives(
            Svc.ListArchivesRequest(page_size=2, page_token="not-a-token")
        )
    )
    assert reason(bad) == "INVALID_PAGE_TOKEN"


async def test_bad_requests_name_the_field(api: ApiHarness) -> None:
    empty = await fails(create_archive(api.org_a, ""))
    assert "archive.display_name" in violations(empty)
    malformed = await fails(create_archive(api.org_a, "x", embedding="no-slash"))
    assert "archive.embedding" in violations(malformed)
    unknown_local = await fails(create_archive(api.org_a, "x", embedding="local/no-such-model"))
    assert "archive.embedding" in violations(unknown_local)
    unconfigured = await fails(create_archive(api.org_a, "x", embedding="openai/text-embedding"))
    assert unconfigured.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(unconfigured) == "PROVIDER_NOT_CONFIGURED"

    archive = await create_archive(api.org_a)
    blank = await fails(add(api.org_a, archive.name, "   "))
    assert "passage.text" in violations(blank)
    no_query = await fails(search(api.org_a, archive.name, ""))
    assert "query" in violations(no_query)
    bad_parent = await fails(add(api.org_a, "blocks/block-1", "text"))
    assert "parent" in violations(bad_parent)
    bad_name = await fails(
        api.org_a.archives.GetPassage(Svc.GetPassageRequest(name=f"{archive.name}/passages/x"))
    )
    assert "name" in violations(bad_name)
    assert await passage_rows(api) == 0


# --------------------------------------------------------------------------- passages


async def test_passages_are_stored_listed_and_deleted(api: ApiHarness) -> None:
    archive = await create_archive(api.org_a)
    metadata = struct_pb2.Struct()
    metadata.update({"source": "chat"})
    first = await api.org_a.archives.CreatePassage(
        Svc.CreatePassageRequest(
            parent=archive.name,
            passage=archive_pb2.Passage(text="one", tags=["a", "b", "a"], metadata=metadata),
            request_id=str(uuid.uuid4()),
        )
    )
    assert first.name == f"{archive.name}/passages/{first.id}"
    assert (first.text, list(first.tags), first.embedding) == ("one", ["a", "b"], LOCAL)
    assert dict(first.metadata) == {"source": "chat"}
    others = [await add(api.org_a, archive.name, text) for text in ("two", "three", "four")]
    got = await api.org_a.archives.GetPassage(Svc.GetPassageRequest(name=first.name))
    assert got == first

    def listing(newest_first: bool) -> list[str]:
        return [p.text for p in [first, *others]][:: -1 if newest_first else 1]

    for newest_first in (False, True):
        texts: list[str] = []
        token = ""
        while True:
            page = await api.org_a.archives.ListPassages(
                Svc.ListPassagesRequest(
                    parent=archive.name, page_size=3, page_token=token, newest_first=newest_first
                )
            )
            texts += [p.text for p in page.passages]
            token = page.next_page_token
            if not token:
                break
        assert texts == listing(newest_first)

    await api.org_a.archives.DeletePassage(Svc.DeletePassageRequest(name=first.name))
    for call in (
        api.org_a.archives.GetPassage(Svc.GetPassageRequest(name=first.name)),
        api.org_a.archives.DeletePassage(Svc.DeletePassageRequest(name=first.name)),
    ):
        assert (await fails(call)).code() == grpc.StatusCode.NOT_FOUND
    fetched = await api.org_a.archives.GetArchive(Svc.GetArchiveRequest(name=archive.name))
    assert fetched.passage_count == 3


async def test_a_batch_is_stored_whole_in_order_and_once(api: ApiHarness) -> None:
    archive = await create_archive(api.org_a)
    request = Svc.BatchCreatePassagesRequest(
        parent=archive.name,
        passages=[archive_pb2.Passage(text=f"fact {i}", tags=[f"t{i}"]) for i in range(3)],
        request_id=str(uuid.uuid4()),
    )
    stored = await api.org_a.archives.BatchCreatePassages(request)
    assert [p.text for p in stored.passages] == ["fact 0", "fact 1", "fact 2"]
    retried = await api.org_a.archives.BatchCreatePassages(request)
    assert [p.name for p in retried.passages] == [p.name for p in stored.passages]
    for passage in stored.passages:  # ids derived from the request id are valid names
        assert await api.org_a.archives.GetPassage(Svc.GetPassageRequest(name=passage.name))
    assert await passage_rows(api) == 3

    refused = await fails(
        api.org_a.archives.BatchCreatePassages(
            Svc.BatchCreatePassagesRequest(
                parent=archive.name,
                passages=[archive_pb2.Passage(text="fine"), archive_pb2.Passage(text="")],
            )
        )
    )
    assert "passages[1].text" in violations(refused)
    empty = await fails(
        api.org_a.archives.BatchCreatePassages(Svc.BatchCreatePassagesRequest(parent=archive.name))
    )
    assert "passages" in violations(empty)
    assert await passage_rows(api) == 3  # nothing of the refused batches


# --------------------------------------------------------------------------- search


async def test_search_ranks_by_meaning(api: ApiHarness) -> None:
    archive = await create_archive(api.org_a)
    await api.org_a.archives.BatchCreatePassages(
        Svc.BatchCreatePassagesRequest(
            parent=archive.name,
            passages=[
                archive_pb2.Passage(text=text)
                for text in (
                    "The invoice from the printer company is due on Friday.",
                    "My dog is named Rex.",
                    "We moved to Lisbon in the spring of 2020.",
                    "The weekly team meeting starts at nine.",
                )
            ],
        )
    )

    response = await api.org_a.archives.SearchPassages(
        Svc.SearchPassagesRequest(parent=archive.name, query="what is my pet called?", top_k=4)
    )
    results = list(response.results)
    assert results[0].passage.text == "My dog is named Rex."
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True) and len(results) == 4
    assert scores[0] > scores[1] + 0.1  # clearly ahead, not by a hair
    assert (await search(api.org_a, archive.name, "when do I have to pay the bill?"))[0] == (
        "The invoice from the printer company is due on Friday."
    )
    top_one = await search(api.org_a, archive.name, "city we live in", top_k=1)
    assert top_one == ["We moved to Lisbon in the spring of 2020."]


async def test_search_filters_by_tags_any_or_all(api: ApiHarness) -> None:
    archive = await create_archive(api.org_a)
    await add(api.org_a, archive.name, "Tea with milk", "food", "drink")
    await add(api.org_a, archive.name, "Pasta on Sundays", "food")
    await add(api.org_a, archive.name, "Running in the park", "sport")

    any_food = await search(api.org_a, archive.name, "what do I like", tags=["food", "sport"])
    assert sorted(any_food) == ["Pasta on Sundays", "Running in the park", "Tea with milk"]
    only_food = await search(api.org_a, archive.name, "what do I like", tags=["food"])
    assert sorted(only_food) == ["Pasta on Sundays", "Tea with milk"]
    both = await search(
        api.org_a, archive.name, "what do I like", tags=["food", "drink"], match_all_tags=True
    )
    assert both == ["Tea with milk"]
    assert await search(api.org_a, archive.name, "anything", tags=["nope"]) == []


async def test_search_filters_by_time(api: ApiHarness) -> None:
    archive = await create_archive(api.org_a)
    early = await add(api.org_a, archive.name, "The early note about gardening")
    late = await add(api.org_a, archive.name, "The late note about gardening")
    assert late.create_time.ToDatetime() > early.create_time.ToDatetime()

    since_late = await search(api.org_a, archive.name, "gardening", start_time=late.create_time)
    assert since_late == [late.text]
    until_early = await search(api.org_a, archive.name, "gardening", end_time=early.create_time)
    assert until_early == [early.text]
    later = timestamp_pb2.Timestamp()
    later.FromDatetime(late.create_time.ToDatetime() + timedelta(seconds=1))
    assert await search(api.org_a, archive.name, "gardening", start_time=later) == []
    backwards = await fails(
        search(
            api.org_a,
            archive.name,
            "gardening",
            start_time=late.create_time,
            end_time=early.create_time,
        )
    )
    assert "end_time" in violations(backwards)


# --------------------------------------------------------------------------- agents


async def test_an_agent_gets_one_default_archive_and_shares_others(api: ApiHarness) -> None:
    ada = await create_agent(api.org_a, "ada")
    bob = await create_agent(api.org_a, "bob")
    assert await search(api.org_a, ada, "anything") == []  # no archive yet: nothing to find

    mine = await add(api.org_a, ada, "Ada's cat is called Tom")
    defaults = await api.org_a.archives.ListArchives(Svc.ListArchivesRequest(agent=ada))
    [default] = defaults.archives
    assert mine.name.startswith(default.name + "/passages/")
    assert (default.default_for, list(default.agents), default.embedding) == (ada, [ada], LOCAL)

    shared = await create_archive(api.org_a, "team")
    await add(api.org_a, shared.name, "The office cat is called Whiskers")
    for agent in (ada, bob):
        attached = await api.org_a.archives.AttachArchive(
            Svc.AttachArchiveRequest(archive=shared.name, agent=agent)
        )
    again = await api.org_a.archives.AttachArchive(
        Svc.AttachArchiveRequest(archive=shared.name, agent=bob)
    )
    assert list(again.agents) == sorted([ada, bob]) == list(attached.agents)

    assert sorted(await search(api.org_a, ada, "cat names")) == [
        "Ada's cat is called Tom",
        "The office cat is called Whiskers",
    ]
    assert await search(api.org_a, bob, "cat names") == ["The office cat is called Whiskers"]
    listed = await api.org_a.archives.ListPassages(Svc.ListPassagesRequest(parent=ada))
    assert len(listed.passages) == 2

    refused = await fails(
        api.org_a.archives.DetachArchive(Svc.DetachArchiveRequest(archive=default.name, agent=ada))
    )
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "default archive" in (refused.details() or "")
    detached = await api.org_a.archives.DetachArchive(
        Svc.DetachArchiveRequest(archive=shared.name, agent=bob)
    )
    assert list(detached.agents) == [ada]
    assert await search(api.org_a, bob, "cat names") == []
    # Detaching again is a no-op, so retries are safe.
    await api.org_a.archives.DetachArchive(Svc.DetachArchiveRequest(archive=shared.name, agent=bob))


async def test_racing_first_inserts_create_one_default_archive(api: ApiHarness) -> None:
    agent = await create_agent(api.org_a)
    await asyncio.gather(*(add(api.org_a, agent, f"memory {i}") for i in range(5)))
    listed = await api.org_a.archives.ListArchives(Svc.ListArchivesRequest(agent=agent))
    assert [(a.default_for, a.passage_count) for a in listed.archives] == [(agent, 5)]


async def test_deleting_an_archive_deletes_its_passages(api: ApiHarness) -> None:
    agent = await create_agent(api.org_a)
    archive = await create_archive(api.org_a)
    passage = await add(api.org_a, archive.name, "soon gone")
    await api.org_a.archives.AttachArchive(
        Svc.AttachArchiveRequest(archive=archive.name, agent=agent)
    )

    in_use = await fails(
        api.org_a.archives.DeleteArchive(Svc.DeleteArchiveRequest(name=archive.name))
    )
    assert in_use.code() == grpc.StatusCode.FAILED_PRECONDITION
    await api.org_a.archives.DeleteArchive(Svc.DeleteArchiveRequest(name=archive.name, force=True))

    gone = await fails(api.org_a.archives.GetPassage(Svc.GetPassageRequest(name=passage.name)))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    assert await passage_rows(api) == 0
    assert await search(api.org_a, agent, "soon gone") == []


# --------------------------------------------------------------------------- tenancy


async def test_another_organization_sees_nothing(api: ApiHarness) -> None:
    agent = await create_agent(api.org_a)
    archive = await create_archive(api.org_a)
    passage = await add(api.org_a, archive.name, "org A's secret")
    b_agent = await create_agent(api.org_b)
    b = api.org_b.archives

    calls = [
        b.GetArchive(Svc.GetArchiveRequest(name=archive.name)),
        b.UpdateArchive(
            Svc.UpdateArchiveRequest(
                archive=archive_pb2.Archive(name=archive.name, description="x")
            )
        ),
        b.DeleteArchive(Svc.DeleteArchiveRequest(name=archive.name, force=True)),
        b.AttachArchive(Svc.AttachArchiveRequest(archive=archive.name, agent=b_agent)),
        b.AttachArchive(Svc.AttachArchiveRequest(archive=archive.name, agent=agent)),
        b.ListArchives(Svc.ListArchivesRequest(agent=agent)),
        b.CreatePassage(
            Svc.CreatePassageRequest(parent=archive.name, passage=archive_pb2.Passage(text="x"))
        ),
        b.CreatePassage(
            Svc.CreatePassageRequest(parent=agent, passage=archive_pb2.Passage(text="x"))
        ),
        b.GetPassage(Svc.GetPassageRequest(name=passage.name)),
        b.DeletePassage(Svc.DeletePassageRequest(name=passage.name)),
        b.ListPassages(Svc.ListPassagesRequest(parent=archive.name)),
        b.SearchPassages(Svc.SearchPassagesRequest(parent=archive.name, query="secret")),
        b.SearchPassages(Svc.SearchPassagesRequest(parent=agent, query="secret")),
    ]
    for call in calls:
        assert (await fails(call)).code() == grpc.StatusCode.NOT_FOUND
    assert list((await b.ListArchives(Svc.ListArchivesRequest())).archives) == []
    # Org B's own agent cannot reach org A's archive either, and A's data is intact.
    assert await search(api.org_a, archive.name, "secret") == ["org A's secret"]
