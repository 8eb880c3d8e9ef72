"""The file tools in real turns: the fake LLM calls them, the server runs them.

Both engines, with the real local embedding model for the sources.  Files are
uploaded and ingested through SourceService, attached to an agent, and the
tests read what the model was sent (the fake provider records every request)
and what the context window holds afterwards.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select, update

from engram.config.settings import Settings
from engram.services.file_tools import MAX_OPEN_FILES, VIEW_CHAR_LIMIT
from engram.store.database import Database
from engram.store.models import FileView, SourceFile
from engram.v1 import (
    agent_pb2,
    agent_service_pb2,
    message_service_pb2,
    source_pb2,
    source_service_pb2,
    tool_service_pb2,
)
from support.api import ApiHarness, Client, running_api
from support.fake_provider import FakeProvider, Reply, ToolCall
from support.llm import MODEL, fake_registry

File = source_pb2.File
NOTES = "".join(f"Line {n} is about topic {n}.\n" for n in range(1, 31))
RECIPES = (
    "To bake bread, mix flour, water, salt and yeast into a dough. Knead it for ten "
    "minutes, let the dough rise for two hours until it doubles, then bake it in a hot "
    "oven for forty minutes until the crust is brown."
)
FILE_TOOL_NAMES = {"open_files", "grep_files", "semantic_search_files"}
PLANETS = (
    "Jupiter is the largest planet of the solar system, a gas giant with dozens of moons. "
    "Saturn has bright rings of ice. Mars is a cold desert planet with red dust."
)


@pytest.fixture
async def chat(
    settings: Settings, database: Database, fake_provider: FakeProvider
) -> AsyncIterator[ApiHarness]:
    llm = fake_registry(fake_provider)
    try:
        async with running_api(settings, database, llm) as harness:
            yield harness
    finally:
        await llm.close()


# --- helpers ---------------------------------------------------------------------------


async def new_agent(client: Client) -> str:
    agent = await client.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(
                display_name="reader", model=MODEL, agent_type=agent_pb2.AGENT_TYPE_NATIVE
            )
        )
    )
    return str(agent.name)


async def new_source(client: Client, name: str, files: dict[str, str]) -> source_pb2.Source:
    """A source with these files (name -> text), every file ingested."""
    source: source_pb2.Source = await client.sources.CreateSource(
        source_service_pb2.CreateSourceRequest(source=source_pb2.Source(display_name=name))
    )
    for file_name, text in files.items():
        media = "text/markdown" if file_name.endswith(".md") else "text/plain"
        file = await client.sources.UploadFile(_upload(source.name, file_name, text, media))
        last = [
            event.file
            async for event in client.sources.WatchFile(
                source_service_pb2.WatchFileRequest(name=file.name)
            )
        ][-1]
        assert last.state == File.STATE_COMPLETED, last.error
    return source


def _upload(
    parent: str, file_name: str, text: str, media_type: str
) -> AsyncIterator[source_service_pb2.UploadFileRequest]:
    async def messages() -> AsyncIterator[source_service_pb2.UploadFileRequest]:
        yield source_service_pb2.UploadFileRequest(
            header=source_service_pb2.UploadFileHeader(
                parent=parent, file_name=file_name, media_type=media_type
            )
        )
        yield source_service_pb2.UploadFileRequest(data=text.encode())

    return messages()


async def attach(client: Client, source: source_pb2.Source, agent: str) -> None:
    await client.sources.AttachSource(
        source_service_pb2.AttachSourceRequest(name=source.name, agent=agent)
    )


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


def chat_requests(fake: FakeProvider) -> list[dict[str, Any]]:
    return [r.body or {} for r in fake.requests if r.path.endswith("/chat/completions")]


def system_prompts(fake: FakeProvider) -> list[str]:
    return [str(body["messages"][0]["content"]) for body in chat_requests(fake)]


async def client_window(client: Client, agent: str) -> message_service_pb2.ContextWindow:
    window: message_service_pb2.ContextWindow = await client.messages.GetContextWindow(
        message_service_pb2.GetContextWindowRequest(name=f"{agent}/contextWindow")
    )
    return window


async def system_message(client: Client, agent: str) -> str:
    return str((await client_window(client, agent)).system_message)


def listed(system: str, name: str) -> str:
    """The state the system message gives the file in its list ("closed", "open, ...")."""
    prefix = f"- {name} ("
    [line] = [line for line in system.splitlines() if line.startswith(prefix)]
    return line[len(prefix) : -1]


def numbered_lines(system: str, name: str) -> list[int]:
    """The line numbers of the file's open window in the system message."""
    start = system.index(f"<open_file name={json.dumps(name)}>")
    end = system.index("</open_file>", start)
    block = system[start:end].splitlines()
    return [int(line.split("→", 1)[0]) for line in block if "→" in line]


async def tool_names(client: Client, agent: str) -> set[str]:
    got = await client.agents.GetAgent(agent_service_pb2.GetAgentRequest(name=agent))
    tools = [
        await client.tools.GetTool(tool_service_pb2.GetToolRequest(name=name)) for name in got.tools
    ]
    return {str(tool.tool_name) for tool in tools}


async def open_views(database: Database, organization_id: str) -> int:
    async with database.read(organization_id) as session:
        count = await session.scalar(
            select(func.count()).select_from(FileView).where(FileView.is_open.is_(True))
        )
        return int(count or 0)


# --- tests -----------------------------------------------------------------------------


async def test_an_opened_file_is_in_the_next_requests_system_message(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    source = await new_source(chat.org_a, "docs", {"notes.txt": NOTES})
    await attach(chat.org_a, source, agent)
    fake_provider.script(
        call(
            "open_files",
            "o1",
            file_requests=[{"file_name": "docs/notes.txt", "offset": 10, "length": 5}],
        ),
        Reply(text="Read it."),
    )

    results = await turn(chat.org_a, agent, "Read lines 11 to 15 of my notes.")

    assert results[0].ok, results[0].text
    assert results[0].text.startswith("Opened docs/notes.txt (lines 11-15 of 30).")
    first, second = system_prompts(fake_provider)
    # The tools came with the source, and the file was listed before it was opened.
    tools = {tool["function"]["name"] for tool in chat_requests(fake_provider)[0]["tools"]}
    assert {"open_files", "grep_files", "semantic_search_files"} <= tools
    assert listed(first, "docs/notes.txt") == "closed"
    assert "<open_file" not in first
    assert listed(second, "docs/notes.txt") == "open, lines 11-15 of 30"
    assert numbered_lines(second, "docs/notes.txt") == [11, 12, 13, 14, 15]
    assert "11→ Line 11 is about topic 11." in second
    # The view is stored: the next turn starts with it.
    assert numbered_lines(await system_message(chat.org_a, agent), "docs/notes.txt") == [
        11,
        12,
        13,
        14,
        15,
    ]

    # GetContextWindow counts the files section, and more of it once more lines are open.
    window = await client_window(chat.org_a, agent)
    assert window.files_tokens > 0
    assert window.total_tokens == sum(
        (
            window.system_prompt_tokens,
            window.core_memory_tokens,
            window.tool_rules_tokens,
            window.memory_statistics_tokens,
            window.files_tokens,
            window.summary_tokens,
            window.messages_tokens,
            window.tool_definitions_tokens,
        )
    )
    five_lines = window.files_tokens

    # Opened again without a window: the whole (short) file from the top.
    fake_provider.script(
        call("open_files", "o2", file_requests=[{"file_name": "notes.txt"}]),
        Reply(text="Whole file."),
    )
    results = await turn(chat.org_a, agent, "Now all of it.")
    assert results[0].text.startswith("Opened docs/notes.txt (lines 1-30 of 30).")
    assert numbered_lines(await system_message(chat.org_a, agent), "docs/notes.txt") == list(
        range(1, 31)
    )
    assert (await client_window(chat.org_a, agent)).files_tokens > five_lines


async def test_an_open_file_shows_at_most_the_character_limit(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    half = VIEW_CHAR_LIMIT // 2 + 1  # two such lines do not fit
    wide = "".join(letter * half + "\n" for letter in "abc")
    source = await new_source(chat.org_a, "docs", {"wide.txt": wide})
    await attach(chat.org_a, source, agent)
    fake_provider.script(
        call("open_files", "o1", file_requests=[{"file_name": "wide.txt"}]),
        Reply(text="Wide."),
    )

    results = await turn(chat.org_a, agent, "Open it.")

    assert results[0].text.startswith(
        "Opened docs/wide.txt (lines 1-1 of 3, cut at the character limit)."
    )
    system = await system_message(chat.org_a, agent)
    assert numbered_lines(system, "docs/wide.txt") == [1]
    assert f"1→ {'a' * half}" in system and "b" * half not in system
    assert "the character limit per open file was reached" in system

    fake_provider.script(
        call("open_files", "o2", file_requests=[{"file_name": "wide.txt", "offset": 3}]),
        call("open_files", "o3", file_requests=[{"file_name": "wide.txt", "offset": 2}]),
        Reply(text="Last line."),
    )
    results = await turn(chat.org_a, agent, "The last line.")
    assert not results[0].ok and "has 3 lines" in results[0].text
    assert results[1].text.startswith("Opened docs/wide.txt (lines 3-3 of 3).")
    assert numbered_lines(await system_message(chat.org_a, agent), "docs/wide.txt") == [3]


async def test_the_open_files_limit_closes_the_oldest_and_files_close(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    names = [f"f{n}.txt" for n in range(1, MAX_OPEN_FILES + 2)]
    source = await new_source(chat.org_a, "docs", {name: f"This is {name}.\n" for name in names})
    await attach(chat.org_a, source, agent)
    fake_provider.script(
        call("open_files", "o1", file_requests=[{"file_name": n} for n in names[:MAX_OPEN_FILES]]),
        call("open_files", "o2", file_requests=[{"file_name": names[-1]}]),
        call("open_files", "o3", close=["docs/f2.txt"]),
        Reply(text="Done."),
    )

    results = await turn(chat.org_a, agent, "Open everything.")

    assert [r.ok for r in results] == [True, True, True]
    assert "Closed docs/f1.txt: at most 5 files stay open" in results[1].text
    assert results[2].text == "Closed docs/f2.txt."
    system = await system_message(chat.org_a, agent)
    states = {name: listed(system, f"docs/{name}") for name in names}
    assert states == {
        "f1.txt": "closed",
        "f2.txt": "closed",
        "f3.txt": "open, lines 1-1 of 1",
        "f4.txt": "open, lines 1-1 of 1",
        "f5.txt": "open, lines 1-1 of 1",
        "f6.txt": "open, lines 1-1 of 1",
    }
    # The third request already showed f2 closed: closing takes effect within the turn.
    assert "This is f2.txt." in system_prompts(fake_provider)[2]
    assert "This is f2.txt." not in system_prompts(fake_provider)[3]

    fake_provider.script(
        call("open_files", "o4", file_requests=[{"file_name": "f1.txt"}], close_all_others=True),
        call("open_files", "o5", file_requests=[{"file_name": n} for n in names]),
        Reply(text="Only f1."),
    )
    results = await turn(chat.org_a, agent, "Only f1 now.")
    assert results[0].ok and "Closed every other file." in results[0].text
    assert not results[1].ok and "At most 5 files" in results[1].text
    system = await system_message(chat.org_a, agent)
    assert [name for name in names if listed(system, f"docs/{name}").startswith("open")] == [
        "f1.txt"
    ]
    assert await open_views(chat.database, chat.org_a.caller.organization_id) == 1


async def test_grep_with_context_pages_and_bad_patterns(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    source = await new_source(
        chat.org_a, "docs", {"notes.txt": NOTES, "planets.md": PLANETS, "xs.txt": "x" * 3000}
    )
    await attach(chat.org_a, source, agent)
    fake_provider.script(
        call("grep_files", "g1", pattern=r"topic 1[12]\b", context_lines=1),
        call("grep_files", "g2", pattern="Line", context_lines=0),
        call("grep_files", "g3", pattern="Line", context_lines=0, offset=20),
        call("grep_files", "g4", pattern="planet|topic", include="*.md", context_lines=0),
        call("grep_files", "g5", pattern="(unclosed"),
        call("grep_files", "g6", pattern="(x+x+)+y"),
        call("grep_files", "g7", pattern="Line", context_lines=99),
        call("grep_files", "g8", pattern="nowhere to be found"),
        Reply(text="Searched."),
    )

    results = await turn(chat.org_a, agent, "Search my files.")

    assert [r.ok for r in results] == [True, True, True, True, False, False, False, True]
    assert results[0].text == "\n".join(
        [
            r"Lines 1-2 of 2 matching 'topic 1[12]\\b':",
            "docs/notes.txt:11",
            "10- Line 10 is about topic 10.",
            "11: Line 11 is about topic 11.",
            "12- Line 12 is about topic 12.",
            "docs/notes.txt:12",
            "11- Line 11 is about topic 11.",
            "12: Line 12 is about topic 12.",
            "13- Line 13 is about topic 13.",
        ]
    )
    first_page = results[1].text.splitlines()
    assert first_page[0] == (
        "Lines 1-20 of 30 matching 'Line' (for the next ones, call again with offset=20):"
    )
    assert first_page[-1] == "20: Line 20 is about topic 20."
    second_page = results[2].text.splitlines()
    assert second_page[0] == "Lines 21-30 of 30 matching 'Line':"
    assert second_page[-1] == "30: Line 30 is about topic 30."
    assert results[3].text.splitlines()[0] == "Lines 1-1 of 1 matching 'planet|topic':"
    assert results[3].text.splitlines()[1] == "docs/planets.md:1"
    assert results[4].text.startswith("The pattern is not a valid regular expression")
    assert "was stopped" in results[5].text
    assert "context_lines" in results[6].text
    assert results[7].text == "No line of the attached files matches 'nowhere to be found'."


async def test_semantic_search_finds_the_right_chunk(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    source = await new_source(
        chat.org_a, "docs", {"planets.md": PLANETS, "recipes.md": RECIPES, "notes.txt": NOTES}
    )
    await attach(chat.org_a, source, agent)
    fake_provider.script(
        call("semantic_search_files", "s1", query="How long should bread dough rise?", limit=2),
        call("semantic_search_files", "s2", query="   "),
        Reply(text="Two hours."),
    )

    results = await turn(chat.org_a, agent, "How long does dough rise?")

    assert results[0].ok, results[0].text
    hits = json.loads(results[0].text)
    assert len(hits) == 2
    assert hits[0]["file"] == "docs/recipes.md"
    assert hits[0]["lines"] == "1-1"
    assert hits[0]["text"] == RECIPES
    assert hits[0]["relevance"] > hits[1]["relevance"]
    assert not results[1].ok and "query" in results[1].text


async def test_only_files_of_attached_sources_of_the_organization_are_visible(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    docs = await new_source(chat.org_a, "docs", {"notes.txt": NOTES, "pending.txt": "Later.\n"})
    await new_source(chat.org_a, "private", {"secret.txt": "The vault code is 4711.\n"})
    await new_source(chat.org_b, "docs", {"secret.txt": "The vault code is 4711.\n"})
    await attach(chat.org_a, docs, agent)
    organization_id = chat.org_a.caller.organization_id
    async with chat.database.transaction(organization_id) as session:
        # A file still being parsed has no text yet.
        await session.execute(
            update(SourceFile)
            .where(SourceFile.file_name == "pending.txt")
            .values(text=None, status="parsing")
        )
    fake_provider.script(
        call("open_files", "o1", file_requests=[{"file_name": "private/secret.txt"}]),
        call("open_files", "o2", file_requests=[{"file_name": "secret.txt"}]),
        call("open_files", "o3", file_requests=[{"file_name": "docs/pending.txt"}]),
        call("grep_files", "g1", pattern="vault"),
        call("semantic_search_files", "s1", query="The vault code is 4711.", limit=20),
        call("open_files", "o4", file_requests=[{"file_name": "docs/notes.txt"}]),
        Reply(text="Nothing secret here."),
    )

    results = await turn(chat.org_a, agent, "What is the vault code?")

    assert [r.ok for r in results] == [False, False, False, True, True, True]
    assert "No attached file is called 'private/secret.txt'" in results[0].text
    assert "No attached file is called 'secret.txt'" in results[1].text
    assert "docs/pending.txt is not ready yet" in results[2].text
    assert results[3].text == "No line of the attached files matches 'vault'."
    # (pending.txt was ingested before the test marked it unparsed: its chunks exist.)
    found = {hit["file"] for hit in json.loads(results[4].text)}
    assert found == {"docs/notes.txt", "docs/pending.txt"}
    system = await system_message(chat.org_a, agent)
    assert "secret" not in system
    assert listed(system, "docs/pending.txt") == "not ready yet"
    assert listed(system, "docs/notes.txt").startswith("open")

    # Detaching the source closes its files and takes the tools away.
    await chat.org_a.sources.DetachSource(
        source_service_pb2.DetachSourceRequest(name=docs.name, agent=agent)
    )
    assert "<files>" not in await system_message(chat.org_a, agent)
    assert await open_views(chat.database, organization_id) == 0
    assert not FILE_TOOL_NAMES & await tool_names(chat.org_a, agent)


async def test_deleting_an_open_file_removes_its_view(
    chat: ApiHarness, fake_provider: FakeProvider
) -> None:
    agent = await new_agent(chat.org_a)
    source = await new_source(chat.org_a, "docs", {"notes.txt": NOTES})
    await attach(chat.org_a, source, agent)
    fake_provider.script(
        call("open_files", "o1", file_requests=[{"file_name": "notes.txt"}]),
        Reply(text="Open."),
    )
    await turn(chat.org_a, agent, "Open my notes.")
    organization_id = chat.org_a.caller.organization_id
    assert await open_views(chat.database, organization_id) == 1

    files = await chat.org_a.sources.ListFiles(
        source_service_pb2.ListFilesRequest(parent=source.name)
    )
    await chat.org_a.sources.DeleteFile(
        source_service_pb2.DeleteFileRequest(name=files.files[0].name)
    )

    assert await open_views(chat.database, organization_id) == 0
    assert "<open_file" not in await system_message(chat.org_a, agent)
    assert await tool_names(chat.org_a, agent) >= FILE_TOOL_NAMES

    # Deleting the agent's only source is a detach too: the tools go.
    await chat.org_a.sources.DeleteSource(source_service_pb2.DeleteSourceRequest(name=source.name))
    assert not FILE_TOOL_NAMES & await tool_names(chat.org_a, agent)
    assert "<files>" not in await system_message(chat.org_a, agent)


async def test_the_file_tools_coming_and_going_move_the_agents_etag(chat: ApiHarness) -> None:
    agent = await new_agent(chat.org_a)
    source = await new_source(chat.org_a, "docs", {"notes.txt": "one line\n"})

    async def etag() -> str:
        got = await chat.org_a.agents.GetAgent(agent_service_pb2.GetAgentRequest(name=agent))
        return str(got.etag)

    before = await etag()
    await attach(chat.org_a, source, agent)
    attached = await etag()
    assert attached != before  # the agent's tools changed
    await chat.org_a.sources.DetachSource(
        source_service_pb2.DetachSourceRequest(name=source.name, agent=agent)
    )
    assert await etag() not in (before, attached)
