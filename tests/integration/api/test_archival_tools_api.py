"""The archival memory tools in real turns: the fake LLM calls them, the server runs them.

Both engines.  The default agent embeds with the real local model; an agent
whose embedding handle is ``openai/text-embedding-3-small`` embeds through the
fake provider's embeddings endpoint, which proves the tools honour the
agent's handle rather than the server's default.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engram.adapters.embeddings.registry import EmbeddingRegistry
from engram.config.settings import Settings
from engram.store.database import Database
from engram.v1 import (
    agent_pb2,
    agent_service_pb2,
    archive_pb2,
    archive_service_pb2,
    message_service_pb2,
)
from support.api import ApiHarness, Client, running_api
from support.fake_provider import FakeProvider, Reply, ToolCall
from support.llm import MODEL, fake_registry

OPENAI_SMALL = "openai/text-embedding-3-small"
Svc = archive_service_pb2


@pytest.fixture
async def chat(
    settings: Settings, database: Database, fake_provider: FakeProvider
) -> AsyncIterator[ApiHarness]:
    llm = fake_registry(fake_provider)
    # The real size of text-embedding-3-small: the adapter checks what comes back.
    fake_provider.embedding_dimensions = 1536
    env = {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": fake_provider.openai_base_url}
    embeddings = EmbeddingRegistry.from_settings(Settings(), env)
    try:
        async with running_api(settings, database, llm, embeddings=embeddings) as harness:
            yield harness
    finally:
        await llm.close()


async def new_agent(client: Client, **fields: Any) -> str:
    agent = await client.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(display_name="pal", model=MODEL, **fields)
        )
    )
    return str(agent.name)


async def turn(client: Client, agent: str, text: str) -> list[message_service_pb2.ToolReturnEvent]:
    """Run one streamed turn; the tool results it produced."""
    call = client.messages.StreamMessage(
        message_service_pb2.StreamMessageRequest(agent=agent, text=text)
    )
    events = [event async for event in call]
    assert events[-2].WhichOneof("event") == "stop_reason"
    return [event.tool_return for event in events if event.WhichOneof("event") == "tool_return"]


def call(name: str, call_id: str, **arguments: Any) -> Reply:
    return Reply(tool_calls=[ToolCall(name, arguments, id=call_id)])


def embedding_requests(fake: FakeProvider) -> list[dict[str, Any]]:
    return [r.body or {} for r in fake.requests if r.path == "/openai/v1/embeddings"]


def found_texts(result: message_service_pb2.ToolReturnEvent) -> list[str]:
    assert result.ok, result.text
    return [item["text"] for item in json.loads(result.text)]


async def statistics_line(client: Client, agent: str) -> str:
    window = await client.messages.GetContextWindow(
        message_service_pb2.GetContextWindowRequest(name=f"{agent}/contextWindow")
    )
    lines = window.system_message.splitlines()
    return next(line for line in lines if line.startswith("Passages in your archival memory"))


async def test_an_agent_remembers_and_recalls_by_meaning(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    assert await statistics_line(chat.org_a, agent) == "Passages in your archival memory: 0"
    fake_provider.script(
        call("archival_memory_insert", "i1", content="The user's dog is named Rex.", tags=["pets"]),
        call("archival_memory_insert", "i2", content="The user's invoice is due on Friday."),
        call("archival_memory_search", "s1", query="what is the name of the user's pet?"),
        call("archival_memory_search", "s2", query="pets", tags=["work"]),
        Reply(text="Your dog is Rex."),
    )

    results = await turn(chat.org_a, agent, "Remember my dog Rex and my invoice.")

    assert [r.ok for r in results] == [True, True, True, True]
    assert results[0].text == "Stored in archival memory with tags pets."
    found = json.loads(results[2].text)
    assert found[0]["text"] == "The user's dog is named Rex."
    assert found[0]["tags"] == ["pets"] and found[0]["time"]
    assert found[0]["relevance"] > found[1]["relevance"]
    assert results[3].text == "Nothing in archival memory matches 'pets'."
    # Local model: no call went to the fake's embeddings endpoint.
    assert embedding_requests(fake_provider) == []
    assert await statistics_line(chat.org_a, agent) == "Passages in your archival memory: 2"
    archives = await chat.org_a.archives.ListArchives(Svc.ListArchivesRequest(agent=agent))
    assert [(a.default_for, a.passage_count, a.embedding) for a in archives.archives] == [
        (agent, 2, "local/all-minilm-l6-v2")
    ]


async def test_the_agents_embedding_handle_is_honoured(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a, embedding=OPENAI_SMALL)
    # A shared archive of the local model is attached too: searches embed per model.
    shared = await chat.org_a.archives.CreateArchive(
        Svc.CreateArchiveRequest(archive=archive_pb2.Archive(display_name="team"))
    )
    await chat.org_a.archives.CreatePassage(
        Svc.CreatePassageRequest(
            parent=shared.name, passage=archive_pb2.Passage(text="The team lunch is on Tuesday.")
        )
    )
    await chat.org_a.archives.AttachArchive(
        Svc.AttachArchiveRequest(archive=shared.name, agent=agent)
    )
    fake_provider.script(
        call("archival_memory_insert", "i1", content="The user prefers green tea."),
        call("archival_memory_search", "s1", query="The user prefers green tea.", top_k=2),
        Reply(text="Noted."),
    )

    results = await turn(chat.org_a, agent, "I like green tea.")

    assert (results[0].ok, results[0].text) == (True, "Stored in archival memory.")
    texts = found_texts(results[1])
    assert sorted(texts) == ["The team lunch is on Tuesday.", "The user prefers green tea."]
    # The fake's vectors depend only on the text, so the same text scores 1.
    assert json.loads(results[1].text)[0] == {
        **json.loads(results[1].text)[0],
        "text": "The user prefers green tea.",
        "relevance": 1.0,
    }
    requests = embedding_requests(fake_provider)
    assert [(r["model"], r["input"]) for r in requests] == [
        ("text-embedding-3-small", ["The user prefers green tea."]),  # the insert
        ("text-embedding-3-small", ["The user prefers green tea."]),  # the query, once
    ]
    archives = await chat.org_a.archives.ListArchives(Svc.ListArchivesRequest(agent=agent))
    by_name = {a.name: a for a in archives.archives}
    [default] = [a for a in archives.archives if a.default_for == agent]
    assert default.embedding == OPENAI_SMALL
    assert by_name[shared.name].embedding == "local/all-minilm-l6-v2"
    listed = await chat.org_a.archives.ListPassages(Svc.ListPassagesRequest(parent=default.name))
    assert [(p.text, p.embedding) for p in listed.passages] == [
        ("The user prefers green tea.", OPENAI_SMALL)
    ]


async def test_bad_arguments_are_tool_errors_and_the_turn_goes_on(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a, agent_type=agent_pb2.AGENT_TYPE_NATIVE)
    fake_provider.script(
        call("archival_memory_search", "s1", query="x", start_datetime="last tuesday"),
        call("archival_memory_search", "s2", query="x", tag_match_mode="some"),
        call("archival_memory_search", "s3", query="x", top_k="five"),
        call("archival_memory_insert", "i1", content="   "),
        call("archival_memory_insert", "i2", content="fine", tags="not-a-list"),
        call("archival_memory_search", "s4", query="anything", end_datetime="2020-01-01"),
        Reply(text="Done."),
    )

    results = await turn(chat.org_a, agent, "Try things.")

    assert [r.ok for r in results] == [False, False, False, False, False, True]
    assert "start_datetime" in results[0].text and "ISO" in results[0].text
    assert "tag_match_mode" in results[1].text
    assert "top_k" in results[2].text
    assert "content" in results[3].text
    assert "tags" in results[4].text
    assert results[5].text == "Nothing in archival memory matches 'anything'."
    assert await statistics_line(chat.org_a, agent) == "Passages in your archival memory: 0"


async def test_an_unreachable_embedding_provider_is_a_tool_error(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a, embedding="vllm/nomic-embed-text")  # not configured
    fake_provider.script(
        call("archival_memory_insert", "i1", content="Something worth keeping."),
        Reply(text="I could not save it."),
    )

    results = await turn(chat.org_a, agent, "Remember this.")

    assert not results[0].ok
    assert results[0].text.startswith("Archival memory is unavailable right now")
    assert "vllm/nomic-embed-text" in results[0].text
    listed = await chat.org_a.archives.ListArchives(Svc.ListArchivesRequest(agent=agent))
    assert list(listed.archives) == []  # nothing was half stored
