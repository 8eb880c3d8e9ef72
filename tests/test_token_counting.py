"""Token counting: tiktoken for OpenAI models, the calibrated estimate elsewhere.

Exact counts are checked against a second, independent implementation of the
same encodings (GitHub's ``bpe-openai``, a Rust BPE with its own data
loading), so a mistake in how we drive tiktoken cannot agree with itself.
"""

from __future__ import annotations

import json
import logging
import socket
import statistics
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import bpe_openai
import pytest
import tiktoken
import tiktoken.registry

from engram.adapters.llm.chat import ChatMessage, Role, ToolCall, ToolSpec
from engram.adapters.tokens import (
    ESTIMATE,
    TiktokenCounter,
    TokenCounters,
    count_context,
    count_message,
    count_tools,
    encoding_for_handle,
)
from engram.adapters.tokens.counter import MESSAGE_OVERHEAD, REPLY_PRIMING, memoized
from engram.adapters.tokens.offline import CACHE_VARIABLE, cache_file_name, seed_cache
from engram.config.settings import Settings
from engram.services.admin import ensure_default_identity
from engram.services.agents import AgentService, NewAgent
from engram.services.messages import MessageService
from engram.services.runtime.summarizer import INSTRUCTIONS
from engram.store.database import Database
from engram.v1 import agent_pb2, agent_service_pb2, block_pb2, message_service_pb2
from support.api import running_api
from support.fake_provider import FakeProvider, Reply
from support.llm import MODEL, fake_registry
from support.token_corpus import repository_corpus

ENCODINGS = ("o200k_base", "cl100k_base")
SAMPLES = (
    "Hello, world!",
    "naïve café — 東京の天気は?",
    '{"label": "human", "content": "Ada lives in Lisbon"}',
    "def f(x):\n    return x_1 + 42  # the answer\n",
    "<|endoftext|> is plain text in a chat message",
    "",
)
# The estimate's error against o200k_base on the repository corpus, per content
# type, as scripts/bench-tokens measures it (mean absolute % error per piece:
# prose ~5, code ~6, json ~3, arguments ~4; bias over a corpus within 6 %).
# The bounds leave room for the README and the code to change.
ESTIMATE_MAX_MEAN_ERROR = 0.09
ESTIMATE_MAX_BIAS = 0.08


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """bpe-openai's encoders, the independent reference."""
    return {name: bpe_openai.get_encoding(name) for name in ENCODINGS}


def reference_count(reference: dict[str, Any], encoding: str, text: str) -> int:
    return len(reference[encoding].encode(text, disallowed_special=())) if text else 0


# --- exact counts ------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_tiktoken_counts_match_an_independent_encoder(
    encoding: str, reference: dict[str, Any]
) -> None:
    counter = TiktokenCounter(tiktoken.get_encoding(encoding))
    assert counter.name == encoding and counter.exact
    for text in SAMPLES:
        assert counter.count(text) == reference_count(reference, encoding, text), text


def test_known_counts() -> None:
    o200k = TiktokenCounter(tiktoken.get_encoding("o200k_base"))
    cl100k = TiktokenCounter(tiktoken.get_encoding("cl100k_base"))
    # Counted by hand from the encodings' vocabularies, and by bpe-openai.
    assert o200k.count("Hello, world!") == cl100k.count("Hello, world!") == 4
    assert o200k.count("naïve café — 東京") == 6
    assert cl100k.count("naïve café — 東京") == 8
    assert o200k.count("") == 0


@pytest.mark.parametrize(
    ("handle", "encoding"),
    [
        ("openai/gpt-4o", "o200k_base"),
        ("openai/gpt-4o-mini", "o200k_base"),
        ("openai/gpt-4.1-mini", "o200k_base"),
        ("openai/o3-mini", "o200k_base"),
        ("openai/gpt-5", "o200k_base"),
        ("openai/gpt-4", "cl100k_base"),
        ("openai/gpt-4-turbo", "cl100k_base"),
        ("openai/gpt-3.5-turbo", "cl100k_base"),
        ("openai/a-model-tiktoken-does-not-know", "o200k_base"),
        ("azure/my-gpt-deployment", "o200k_base"),
        ("openrouter/openai/gpt-4", "cl100k_base"),
        ("openrouter/meta-llama/llama-3.1-8b", None),
        ("anthropic/claude-sonnet-4", None),
        ("ollama/llama3.2", None),
        ("openai/", None),
        ("", None),
    ],
)
def test_the_model_handle_picks_the_encoding(handle: str, encoding: str | None) -> None:
    assert encoding_for_handle(handle) == encoding


def test_messages_pay_openais_framing(reference: dict[str, Any]) -> None:
    counter = TiktokenCounter(tiktoken.get_encoding("o200k_base"))

    def ref(text: str) -> int:
        return reference_count(reference, "o200k_base", text)

    plain = ChatMessage(Role.USER, "Where does Ada live?")
    assert count_message(counter, plain) == MESSAGE_OVERHEAD + ref("user") + ref(plain.content)
    named = ChatMessage(Role.TOOL, "Lisbon", tool_call_id="c1", name="conversation_search")
    assert count_message(counter, named) == (
        MESSAGE_OVERHEAD + ref("tool") + ref("Lisbon") + 1 + ref("conversation_search") + ref("c1")
    )
    call = ToolCall("c1", "conversation_search", '{"query": "Ada"}')
    asking = ChatMessage(Role.ASSISTANT, "", tool_calls=[call])
    assert count_message(counter, asking) == (
        MESSAGE_OVERHEAD + ref("assistant") + 3 + ref(call.name) + ref(call.arguments) + ref("c1")
    )
    tool = ToolSpec("send_message", "Say something.", {"type": "object", "properties": {}})
    schema = [{"name": tool.name, "description": tool.description, "parameters": tool.parameters}]
    assert count_tools(counter, [tool]) == ref(json.dumps(schema))
    assert count_tools(counter, []) == 0
    messages = [plain, asking, named]
    assert count_context(counter, messages, [tool]) == (
        sum(count_message(counter, m) for m in messages) + ref(json.dumps(schema)) + REPLY_PRIMING
    )


async def test_counters_are_chosen_by_provider() -> None:
    counters = TokenCounters()
    exact = await counters.for_model("openai/gpt-4o")
    assert (exact.name, exact.exact) == ("o200k_base", True)
    assert await counters.for_model("openai/gpt-4o-mini") is exact  # loaded once
    assert (await counters.for_model("openai/gpt-4")).name == "cl100k_base"
    assert await counters.for_model("anthropic/claude-sonnet-4") is ESTIMATE
    assert await counters.for_model("") is ESTIMATE


# --- falling back to the estimate ---------------------------------------------------------


async def test_a_failing_load_falls_back_to_the_estimate_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(name: str) -> tiktoken.Encoding:
        raise OSError(f"no file for {name}")

    counters = TokenCounters(broken)
    with caplog.at_level(logging.WARNING, logger="engram.adapters.tokens.selection"):
        first = await counters.for_model("openai/gpt-4o")
        second = await counters.for_model("openai/gpt-4.1")
    assert first is second is ESTIMATE
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no file for o200k_base" in warnings[0] and CACHE_VARIABLE in warnings[0]


async def test_a_hung_load_is_waited_for_only_until_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()

    def slow(name: str) -> tiktoken.Encoding:
        release.wait(30)
        return tiktoken.get_encoding(name)

    counters = TokenCounters(slow, load_timeout=0.2)
    with caplog.at_level(logging.WARNING, logger="engram.adapters.tokens.selection"):
        assert await counters.for_model("openai/gpt-4o") is ESTIMATE
        assert await counters.for_model("openai/gpt-4o") is ESTIMATE  # no second wait
    assert len([r for r in caplog.records if "did not load o200k_base" in r.getMessage()]) == 1

    # Once the slow load is done, the exact counter takes over.
    release.set()
    _join_load_threads()
    assert (await counters.for_model("openai/gpt-4o")).name == "o200k_base"


@pytest.fixture
def empty_tiktoken_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """tiktoken with nothing cached and no encodings loaded in this process."""
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    monkeypatch.setenv(CACHE_VARIABLE, str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return cache


@pytest.fixture
def silent_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Downloads go to a local proxy that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel completes the handshakes; nobody ever replies
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("HTTPS_PROXY", url)
    monkeypatch.setenv("https_proxy", url)
    try:
        yield
    finally:
        listener.close()  # resets the waiting connections: tiktoken's download fails
        _join_load_threads()


@pytest.mark.usefixtures("empty_tiktoken_cache", "silent_proxy")
async def test_real_tiktoken_without_network_does_not_hang_the_caller() -> None:
    counters = TokenCounters(load_timeout=0.5)
    assert await counters.for_model("openai/gpt-4o") is ESTIMATE


async def test_real_tiktoken_with_the_download_refused_falls_back(
    empty_tiktoken_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connections are refused at once
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    counters = TokenCounters(load_timeout=30)
    assert await counters.for_model("openai/gpt-4o") is ESTIMATE
    assert not any(empty_tiktoken_cache.iterdir())  # noqa: ASYNC240 - a test's tmp dir


async def test_a_seeded_cache_loads_offline_through_tiktokens_hash_check(
    empty_tiktoken_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # any download would fail
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    written = seed_cache(empty_tiktoken_cache, ["o200k_base"])
    assert written == [empty_tiktoken_cache / cache_file_name(url)]
    counter = await TokenCounters().for_model("openai/gpt-4o")
    assert counter.exact and counter.count("Hello, world!") == 4

    # A damaged file fails tiktoken's check (it then tries to download, which fails).
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    written[0].write_bytes(b"not an encoding\n")
    assert await TokenCounters(load_timeout=30).for_model("openai/gpt-4o") is ESTIMATE


def _join_load_threads() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("tiktoken-load-"):
            thread.join(timeout=30)


# --- the estimate's error -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["prose", "code", "json", "arguments"])
def test_the_estimate_stays_within_its_measured_error(kind: str) -> None:
    pieces = repository_corpus()[kind]
    assert len(pieces) >= 8
    exact = TiktokenCounter(tiktoken.get_encoding("o200k_base"))
    truth = [exact.count(piece) for piece in pieces]
    guess = [ESTIMATE.count(piece) for piece in pieces]
    errors = [(g - t) / t for g, t in zip(guess, truth, strict=True)]
    assert statistics.mean(abs(e) for e in errors) <= ESTIMATE_MAX_MEAN_ERROR
    assert abs(sum(guess) - sum(truth)) / sum(truth) <= ESTIMATE_MAX_BIAS


def test_the_estimate_of_nothing_is_nothing() -> None:
    assert ESTIMATE.count("") == 0
    assert ESTIMATE.count("a") == 1
    assert not ESTIMATE.exact


# --- the runtime counts with them ---------------------------------------------------------


async def test_the_context_window_reports_tiktoken_counts_for_an_openai_agent(
    settings: Settings, database: Database, fake_provider: FakeProvider, reference: dict[str, Any]
) -> None:
    registry = fake_registry(fake_provider)
    # Three different counts: o200k_base, cl100k_base and the estimate each tell apart.
    prompt = (
        "You help Ada plan trips to São Paulo, Kraków or 東京. "
        "Answer in one short paragraph; never invent prices."
    )
    try:
        async with running_api(settings, database, registry) as api:
            agents = {}
            for model in ("openai/gpt-4o", "openai/gpt-4", "anthropic/claude-sonnet-4"):
                created = await api.org_a.agents.CreateAgent(
                    agent_service_pb2.CreateAgentRequest(
                        agent=agent_pb2.Agent(display_name="pal", model=model, system=prompt),
                        memory_blocks=[block_pb2.Block(label="human", value="Name: Ada")],
                    )
                )
                agents[model] = created.name
            fake_provider.script(Reply(text="Lisbon in May is lovely, Ada."))
            await api.org_a.messages.SendMessage(
                message_service_pb2.SendMessageRequest(
                    agent=agents["openai/gpt-4o"], text="Where should I go in May?"
                )
            )
            windows = {
                model: await api.org_a.messages.GetContextWindow(
                    message_service_pb2.GetContextWindowRequest(name=f"{name}/contextWindow")
                )
                for model, name in agents.items()
            }
    finally:
        await registry.close()

    def ref(encoding: str, text: str) -> int:
        return reference_count(reference, encoding, text)

    gpt4o = windows["openai/gpt-4o"]
    assert gpt4o.system_prompt_tokens == ref("o200k_base", prompt)
    frame = MESSAGE_OVERHEAD * 2 + ref("o200k_base", "user") + ref("o200k_base", "assistant")
    assert gpt4o.messages_tokens == frame + ref("o200k_base", "Where should I go in May?") + ref(
        "o200k_base", "Lisbon in May is lovely, Ada."
    )
    assert windows["openai/gpt-4"].system_prompt_tokens == ref("cl100k_base", prompt)
    estimated = windows["anthropic/claude-sonnet-4"]
    assert estimated.system_prompt_tokens == ESTIMATE.count(prompt)
    assert len({ESTIMATE.count(prompt), ref("o200k_base", prompt), ref("cl100k_base", prompt)}) == 3
    for window in windows.values():
        assert window.tool_definitions_tokens > 0
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


# --- compaction triggers on real counts ---------------------------------------------------


@pytest.fixture(params=[0.9, 0.6], ids=["default-trigger", "trigger-0.6"])
def trigger(request: pytest.FixtureRequest) -> float:
    """The compaction trigger (ENGRAM_COMPACTION_TRIGGER_FRACTION): the default, and another."""
    return float(request.param)


@pytest.fixture
async def service(
    database: Database, fake_provider: FakeProvider, trigger: float
) -> AsyncIterator[tuple[MessageService, AgentService]]:
    registry = fake_registry(fake_provider)
    try:
        service = MessageService(database, registry, compaction_trigger=trigger)
        yield service, AgentService(database)
    finally:
        await registry.close()


def wire_count(reference: dict[str, Any], body: dict[str, Any]) -> int:
    """What a Chat Completions request takes, counted independently of the server's code."""

    def ref(text: str) -> int:
        return reference_count(reference, "o200k_base", text)

    total = REPLY_PRIMING
    for message in body["messages"]:
        assert not message.get("tool_calls") and not message.get("name")
        total += MESSAGE_OVERHEAD + ref(message["role"]) + ref(message.get("content") or "")
    schemas = [tool["function"] for tool in body.get("tools") or ()]
    if schemas:
        rendered = [
            {
                "name": s["name"],
                "description": s.get("description", ""),
                "parameters": s["parameters"],
            }
            for s in schemas
        ]
        total += ref(json.dumps(rendered, ensure_ascii=False))
    return total


def window_with_threshold(threshold: int, fraction: float = 0.9) -> int:
    """A window whose compaction threshold, int(window * fraction), is ``threshold``."""
    window = int(threshold / fraction)
    while int(window * fraction) < threshold:
        window += 1
    assert int(window * fraction) == threshold
    return window


def chat_requests(fake: FakeProvider) -> list[dict[str, Any]]:
    return [r.body for r in fake.requests if r.body is not None]


async def test_compaction_triggers_at_the_configured_fraction_of_the_real_count(
    service: tuple[MessageService, AgentService],
    database: Database,
    fake_provider: FakeProvider,
    reference: dict[str, Any],
    trigger: float,
) -> None:
    messages, agents = service
    caller = await ensure_default_identity(database)
    view = await agents.create(
        caller,
        NewAgent(
            values={
                "display_name": "pal",
                "agent_type": "native",
                "model": MODEL,  # openai/...: counted with o200k_base
                "system": "You are a terse assistant.",
                "context_window_limit": 100_000,
            },
            memory_blocks=[{"label": "human", "value": "Name: Ada", "limit": 200}],
            tool_names=["conversation_search"],
            include_base_tools=False,
        ),
        request_id="",
    )
    agent_id = view.agent.id

    async def turn(text: str, answer: str, window: int | None = None) -> list[dict[str, Any]]:
        """Run a turn; the requests it made (a compaction adds the summary request first)."""
        if window is not None:
            await agents.update(caller, agent_id, {"context_window_limit": window}, "")
        before = len(chat_requests(fake_provider))
        fake_provider.script(Reply(text=answer))
        async for _ in messages.send(caller, agent_id, text):
            pass
        return chat_requests(fake_provider)[before:]

    def next_call(previous: dict[str, Any], answer: str, text: str) -> dict[str, Any]:
        """The request the next turn will make: the last one, its answer, the new message."""
        following = [{"role": "assistant", "content": answer}, {"role": "user", "content": text}]
        return {**previous, "messages": [*previous["messages"], *following]}

    # Messages of words tiktoken and the old four-bytes rule count very differently.
    wordy = " ".join(["extraordinarily"] * 40)
    [first] = await turn(f"Note this: {wordy}", f"Noted: {wordy}")

    # At exactly the threshold, nothing happens...
    expected = wire_count(reference, next_call(first, f"Noted: {wordy}", "Second question?"))
    window = window_with_threshold(expected, trigger)
    [second] = await turn("Second question?", "Second answer.", window)
    assert second["messages"][0]["content"] != INSTRUCTIONS
    assert wire_count(reference, second) == expected  # the prediction was exact

    # ... one token over it, the coming call is compacted first.
    expected = wire_count(reference, next_call(second, "Second answer.", "Third question?"))
    fake_provider.script(Reply(text="Ada asked two questions."))
    summary_request, answered = await turn(
        "Third question?", "Third answer.", window_with_threshold(expected - 1, trigger)
    )
    assert summary_request["messages"][0]["content"] == INSTRUCTIONS
    assert answered["messages"][1]["content"].endswith("Ada asked two questions.")


def test_counts_of_long_texts_are_remembered_not_confused() -> None:
    calls: list[str] = []

    def tokenize(text: str) -> int:
        calls.append(text)
        return len(text.split())

    count = memoized(tokenize, size=2)
    first, second, third = ("word " * 100, "other " * 100, "third " * 100)
    assert [count(first), count(first), count(second)] == [100, 100, 100]
    assert calls == [first, second]  # the repeat was remembered
    assert count("short text") == 2 and count("short text") == 2
    assert calls[-2:] == ["short text", "short text"]  # short texts are just counted
    count(third)  # evicts the least recently used: first
    count(first)
    assert calls[-1] == first
