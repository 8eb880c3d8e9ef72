"""Ranked message search on both engines: SearchMessages and the conversation_search tool.

Messages are written straight into the store (so that their times and
contents are exactly what a test needs) after the schema is migrated, which
also checks that the index follows new rows; searches go through the real
server, as a client would send them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from engram.config.settings import Settings
from engram.rpc.errors import reason_of, unpack_detail
from engram.services.message_search import conversation_search
from engram.store.database import Database
from engram.store.migrations import downgrade, upgrade
from engram.store.models import Message
from engram.v1 import agent_pb2, agent_service_pb2, message_pb2, message_service_pb2
from support.api import ApiHarness, Client, rich_status, running_api
from support.fake_provider import FakeProvider, Reply, ToolCall
from support.llm import MODEL, fake_registry

BEFORE_SEARCH = "0004_message_buffer"
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
USER = message_pb2.MESSAGE_ROLE_USER
ASSISTANT = message_pb2.MESSAGE_ROLE_ASSISTANT


@pytest.fixture
async def api(
    settings: Settings, database: Database, fake_provider: FakeProvider
) -> AsyncIterator[ApiHarness]:
    registry = fake_registry(fake_provider)
    try:
        async with running_api(settings, database, registry) as harness:
            yield harness
    finally:
        await registry.close()


@dataclass(frozen=True)
class Said:
    """A message to store: who, what, and how many hours after START."""

    role: str
    text: str
    hours: int = 0
    tool_calls: Sequence[dict[str, Any]] | None = None
    name: str | None = None


async def new_agent(client: Client) -> str:
    agent = await client.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(
                display_name="pal", model=MODEL, agent_type=agent_pb2.AGENT_TYPE_NATIVE
            )
        )
    )
    return str(agent.name)


async def store(database: Database, client: Client, agent: str, said: Sequence[Said]) -> list[str]:
    """Append ``said`` to the agent's history; the new messages' ids, in order."""
    agent_id = agent.removeprefix("agents/")

    async def work(session: AsyncSession) -> list[str]:
        last = await session.scalar(
            select(func.max(Message.sequence_id)).where(Message.agent_id == agent_id)
        )
        rows = [
            Message(
                agent_id=agent_id,
                sequence_id=(last or 0) + index + 1,
                role=each.role,
                content=[{"type": "text", "text": each.text}] if each.text else [],
                text=each.text,
                tool_calls=list(each.tool_calls) if each.tool_calls else None,
                name=each.name,
                created_at=START + timedelta(hours=each.hours),
            )
            for index, each in enumerate(said)
        ]
        session.add_all(rows)
        await session.flush()
        return [row.id for row in rows]

    return await database.run_transaction(work, client.caller.organization_id)


async def search(
    client: Client, agent: str, query: str, **options: Any
) -> message_service_pb2.SearchMessagesResponse:
    response: message_service_pb2.SearchMessagesResponse = await client.messages.SearchMessages(
        message_service_pb2.SearchMessagesRequest(parent=agent, query=query, **options)
    )
    return response


async def texts(client: Client, agent: str, query: str, **options: Any) -> list[str]:
    return [r.message.text for r in (await search(client, agent, query, **options)).results]


def at(hours: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(START + timedelta(hours=hours))
    return stamp


async def test_messages_matching_more_words_rank_first(api: ApiHarness) -> None:
    agent = await new_agent(api.org_a)
    await store(
        api.database,
        api.org_a,
        agent,
        [
            Said("user", "Lisbon has yellow trams on steep hills", 0),
            Said("assistant", "The weather in Lisbon is sunny in spring", 1),
            Said("user", "My cats sleep most of the day", 2),
        ],
    )

    response = await search(api.org_a, agent, "sunny Lisbon")

    assert [r.message.text for r in response.results] == [
        "The weather in Lisbon is sunny in spring",
        "Lisbon has yellow trams on steep hills",
    ]
    relevance = [r.relevance for r in response.results]
    assert relevance[0] > relevance[1] > 0
    assert response.results[0].message.role == ASSISTANT
    assert response.results[0].message.name.startswith(agent + "/messages/")


async def test_equal_matches_go_newest_first_and_words_are_stemmed(api: ApiHarness) -> None:
    agent = await new_agent(api.org_a)
    await store(
        api.database,
        api.org_a,
        agent,
        [
            Said("user", "We walked along the river", 0),
            Said("user", "We walked along the canal", 5),
            Said("user", "Nothing to see here", 6),
        ],
    )

    assert await texts(api.org_a, agent, "walking") == [
        "We walked along the canal",
        "We walked along the river",
    ]


@pytest.mark.parametrize("engine_kind", ["sqlite"], indirect=True)
async def test_rare_words_weigh_more_on_sqlite(api: ApiHarness) -> None:
    # BM25 weighs words by rarity; PostgreSQL's cover density has no such notion.
    agent = await new_agent(api.org_a)
    common = [Said("user", f"Coffee number {n} of the week", n) for n in range(6)]
    await store(
        api.database,
        api.org_a,
        agent,
        [
            *common,
            Said("user", "Coffee again this morning", 10),
            Said("user", "Zanzibar again this morning", 0),
        ],
    )

    found = await texts(api.org_a, agent, "coffee zanzibar")

    # The rare word beats the common one, though its message is older.
    assert found[0] == "Zanzibar again this morning"
    assert len(found) == 8


async def test_roles_and_times_filter_the_search(api: ApiHarness) -> None:
    agent = await new_agent(api.org_a)
    await store(
        api.database,
        api.org_a,
        agent,
        [
            Said("user", "Paris in the morning", 0),
            Said("assistant", "Paris at noon", 3),
            Said("user", "Paris in the evening", 6),
        ],
    )

    assert await texts(api.org_a, agent, "Paris", roles=[ASSISTANT]) == ["Paris at noon"]
    assert await texts(api.org_a, agent, "Paris", roles=[USER]) == [
        "Paris in the evening",
        "Paris in the morning",
    ]
    # start_time is inclusive, end_time exclusive.
    assert await texts(api.org_a, agent, "Paris", start_time=at(3), end_time=at(6)) == [
        "Paris at noon"
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search(api.org_a, agent, "Paris", start_time=at(6), end_time=at(3))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_pages_follow_the_ranking(api: ApiHarness) -> None:
    agent = await new_agent(api.org_a)
    await store(
        api.database,
        api.org_a,
        agent,
        [
            Said("user", "tea", 0),
            Said("user", "tea tea tea", 1),
            Said("user", "tea and cake", 2),
            Said("user", "green tea", 3),
            Said("user", "tea tea", 4),
        ],
    )
    everything = await texts(api.org_a, agent, "tea")
    assert len(everything) == 5

    pages: list[str] = []
    token = ""
    while True:
        page = await search(api.org_a, agent, "tea", page_size=2, page_token=token)
        assert len(page.results) <= 2
        pages.extend(r.message.text for r in page.results)
        token = page.next_page_token
        if not token:
            break
    assert pages == everything

    first = await search(api.org_a, agent, "tea", page_size=2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search(api.org_a, agent, "cake", page_size=2, page_token=first.next_page_token)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(rich_status(caught.value)) == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize(
    "query",
    [
        '"cats',
        "cats AND",
        "AND OR NOT cats",
        "cats*",
        "-cats",
        "(cats OR",
        "NEAR(cats dogs)",
        "body:cats",
        "cats^ 'dogs' \\ & | ! <-> :*",
        "snake_case ___ cats",
        "Ünïcödé café cats",
    ],
)
async def test_query_syntax_of_either_engine_is_plain_text(api: ApiHarness, query: str) -> None:
    agent = await new_agent(api.org_a)
    await store(api.database, api.org_a, agent, [Said("user", "Two cats on the sofa")])

    assert "Two cats on the sofa" in await texts(api.org_a, agent, query)


async def test_a_query_without_words_finds_nothing(api: ApiHarness) -> None:
    agent = await new_agent(api.org_a)
    await store(api.database, api.org_a, agent, [Said("user", '(*) - " ...')])

    assert await texts(api.org_a, agent, '(*) - " ...') == []


@pytest.mark.parametrize("query", ["", "   \n\t"])
async def test_an_empty_query_is_invalid(api: ApiHarness, query: str) -> None:
    agent = await new_agent(api.org_a)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search(api.org_a, agent, query)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request = unpack_detail(rich_status(caught.value), error_details_pb2.BadRequest)
    assert request is not None
    assert [v.field for v in request.field_violations] == ["query"]


async def test_another_organization_cannot_search_the_agent(api: ApiHarness) -> None:
    agent = await new_agent(api.org_a)
    await store(api.database, api.org_a, agent, [Said("user", "The vault code is 4711")])
    other = await new_agent(api.org_b)
    await store(api.database, api.org_b, other, [Said("user", "Our vault is empty")])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search(api.org_b, agent, "vault")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert await texts(api.org_b, other, "vault") == ["Our vault is empty"]
    assert await texts(api.org_a, agent, "vault") == ["The vault code is 4711"]


async def test_tool_arguments_are_searched_but_not_earlier_searches(api: ApiHarness) -> None:
    agent = await new_agent(api.org_a)
    noted = '{"label": "human", "content": "Ada drinks oolong"}'
    await store(
        api.database,
        api.org_a,
        agent,
        [
            Said("assistant", "", 0, [{"id": "c1", "name": "memory_insert", "arguments": noted}]),
            Said(
                "assistant",
                "",
                1,
                [{"id": "c2", "name": "conversation_search", "arguments": '{"query": "oolong"}'}],
            ),
            Said("tool", "[oolong results]", 2, name="conversation_search"),
            Said("user", "Remember oolong for later", 3, name="engram"),
        ],
    )

    response = await search(api.org_a, agent, "oolong")

    assert [r.message.tool_calls[0].name for r in response.results] == ["memory_insert"]


async def test_the_index_follows_updates_and_deletes(api: ApiHarness) -> None:
    agent = await new_agent(api.org_a)
    _, changed, dropped = await store(
        api.database,
        api.org_a,
        agent,
        [Said("user", "apples", 0), Said("user", "pears", 1), Said("user", "plums", 2)],
    )

    async def work(session: AsyncSession) -> None:
        await session.execute(
            update(Message)
            .where(Message.id == changed)
            .values(
                text="quinces and pears", content=[{"type": "text", "text": "quinces and pears"}]
            )
        )
        await session.execute(delete(Message).where(Message.id == dropped))

    await api.database.run_transaction(work, api.org_a.caller.organization_id)

    assert await texts(api.org_a, agent, "quince") == ["quinces and pears"]
    assert await texts(api.org_a, agent, "plums") == []
    assert await texts(api.org_a, agent, "apples") == ["apples"]
    if api.database.choice.is_sqlite:
        async with api.database.read(None) as session:
            indexed = await session.scalar(text("SELECT count(*) FROM message_search"))
            stored = await session.scalar(text("SELECT count(*) FROM messages"))
        assert indexed == stored == 2


async def test_messages_stored_before_the_migration_are_found(api: ApiHarness) -> None:
    agent = await new_agent(api.org_a)
    await store(api.database, api.org_a, agent, [Said("user", "An heirloom tomato recipe")])

    await downgrade(api.database.engine, BEFORE_SEARCH)
    await store(api.database, api.org_a, agent, [Said("user", "Tomato soup tonight", 1)])
    await upgrade(api.database.engine)

    assert await texts(api.org_a, agent, "tomatoes") == [
        "Tomato soup tonight",
        "An heirloom tomato recipe",
    ]


async def test_conversation_search_ranks_during_a_turn(
    api: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(api.org_a)
    await store(
        api.database,
        api.org_a,
        agent,
        [
            Said("user", "My cat Tom loves sardines", 0),
            Said("assistant", "Sardines it is, then.", 1),
            Said("user", "Paris is lovely in spring", 2),
        ],
    )
    fake_provider.script(
        Reply(tool_calls=[ToolCall("conversation_search", {"query": "Tom sardines"}, id="s1")]),
        Reply(text="Tom loves sardines."),
        Reply(tool_calls=[ToolCall("conversation_search", {"query": "sardines"}, id="s2")]),
        Reply(text="Still sardines."),
    )

    first = await found_by_tool(api.org_a, agent, "What does Tom like? Sardines?")
    second = await found_by_tool(api.org_a, agent, "Remind me again")

    # The question of the turn is left out; the best match comes first.
    assert [(f["role"], f["text"]) for f in first] == [
        ("user", "My cat Tom loves sardines"),
        ("assistant", "Sardines it is, then."),
    ]
    assert first[0]["relevance"] > first[1]["relevance"] > 0
    # The first turn's search (its call and its result) is not found again;
    # the question and answer of that turn are.  (The engines order these
    # differently: BM25 favours the shorter messages.)
    assert sorted(f["text"] for f in second) == [
        "My cat Tom loves sardines",
        "Sardines it is, then.",
        "Tom loves sardines.",
        "What does Tom like? Sardines?",
    ]
    relevance = [f["relevance"] for f in second]
    assert relevance == sorted(relevance, reverse=True)


async def test_the_tool_reads_dates_as_whole_days_and_explains_bad_arguments(
    api: ApiHarness,
) -> None:
    agent = await new_agent(api.org_a)
    await store(
        api.database,
        api.org_a,
        agent,
        [
            Said("user", "Picnic plans", 0),  # 2026-03-01 09:00
            Said("user", "Picnic photos", 24 * 1 + 14),  # 2026-03-02 23:00
            Said("user", "Picnic leftovers", 24 * 2 + 1),  # 2026-03-03 10:00
            Said("user", "Weather report", 24 * 2 + 2),
        ],
    )

    async def run(**arguments: Any) -> tuple[bool, str]:
        outcome = await conversation_search(
            api.database,
            api.org_a.caller.organization_id,
            agent.removeprefix("agents/"),
            "run-elsewhere",
            arguments,
        )
        return outcome.ok, outcome.text

    ok, found = await run(query="picnic", start_date="2026-03-02", end_date="2026-03-02")
    assert ok and [f["text"] for f in json.loads(found)] == ["Picnic photos"]
    ok, found = await run(query="picnic", limit=2)
    assert ok and [f["text"] for f in json.loads(found)] == ["Picnic leftovers", "Picnic photos"]
    # Without a query: the newest messages that pass the filters, unranked.
    ok, found = await run(end_date="2026-03-01")
    assert ok and json.loads(found) == [
        {"time": "2026-03-01T09:00:00+00:00", "role": "user", "text": "Picnic plans"}
    ]
    assert await run(query="(*)") == (True, "No earlier message matches '(*)'.")
    assert await run(query="volcano") == (True, "No earlier message matches 'volcano'.")
    assert await run(query="picnic", roles="user") == (
        False,
        "The argument 'roles' must be a list of role names.",
    )
    assert await run(query="picnic", limit="many") == (
        False,
        "The argument 'limit' must be an integer.",
    )
    assert await run(query="picnic", start_date="March") == (
        False,
        "The argument 'start_date' must be an ISO date such as 2025-01-31.",
    )


async def found_by_tool(client: Client, agent: str, question: str) -> list[dict[str, Any]]:
    """Run a turn in which the model searches once; what the search returned."""
    response = await client.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text=question)
    )
    result = next(m for m in response.messages if m.role == message_pb2.MESSAGE_ROLE_TOOL)
    packaged = json.loads(result.text)
    assert packaged["status"] == "ok"
    found: list[dict[str, Any]] = json.loads(packaged["result"])
    return found
