"""Embedding adapters: the local MiniLM model for real, remote providers through the
real ``openai`` SDK against the fake provider's ``/v1/embeddings``."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import openai
import pytest
from pydantic import ValidationError

from engram.adapters.embeddings import local as local_module
from engram.adapters.embeddings.local import ALL_MINILM_L6_V2, LocalEmbedder, LocalModelError
from engram.adapters.embeddings.openai_embeddings import OpenAIEmbedder
from engram.adapters.embeddings.registry import EmbeddingRegistry
from engram.adapters.embeddings.wordpiece import bert_uncased_tokenizer
from engram.adapters.llm.errors import (
    InvalidProviderResponseError,
    ProviderAuthError,
    ProviderRateLimitedError,
    ProviderRejectedRequestError,
    ProviderUnavailableError,
)
from engram.adapters.llm.registry import ProviderNotConfiguredError
from engram.config.settings import Settings
from support.fake_provider import ErrorReply, FakeProvider, fake_embedding

VOCABULARY_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder(ALL_MINILM_L6_V2, batch_size=8)


# --- the tokenizer ------------------------------------------------------------------------


def test_vocabulary_is_the_published_bert_uncased_file() -> None:
    data = ALL_MINILM_L6_V2.vocabulary.read_bytes()
    assert hashlib.sha256(data).hexdigest() == VOCABULARY_SHA256
    assert len(data.decode("utf-8").splitlines()) == 30522


def test_tokenizer_lowercases_strips_accents_and_frames_with_cls_sep() -> None:
    vocabulary = ALL_MINILM_L6_V2.vocabulary.read_text("utf-8").splitlines()
    tokenizer = bert_uncased_tokenizer(ALL_MINILM_L6_V2.vocabulary, 256)
    encoding = tokenizer.encode("Héllo WORLD, embeddings!")
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"
    assert encoding.tokens[1:4] == ["hello", "world", ","]
    assert any(token.startswith("##") for token in encoding.tokens)  # "embeddings" is split
    assert encoding.ids == [vocabulary.index(token) for token in encoding.tokens]


def test_tokenizer_truncates_to_the_model_limit() -> None:
    tokenizer = bert_uncased_tokenizer(ALL_MINILM_L6_V2.vocabulary, 256)
    encoding = tokenizer.encode("word " * 1000)
    assert len(encoding.ids) == 256
    assert encoding.tokens[-1] == "[SEP]"


# --- the local model ----------------------------------------------------------------------


async def test_local_vectors_have_384_dimensions_and_unit_length(local: LocalEmbedder) -> None:
    vectors = await local.embed(["The cat sat on the mat.", "", "Quarterly revenue grew."])
    assert local.dimension == 384
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(vectors))


async def test_local_embedding_is_deterministic(local: LocalEmbedder) -> None:
    texts = ["Agents remember what users tell them.", "An unrelated line about trains."]
    first = await local.embed(texts)
    again = await local.embed(texts)
    fresh = await LocalEmbedder(ALL_MINILM_L6_V2, batch_size=1).embed(texts)
    assert np.array_equal(first, again)
    assert np.allclose(first, fresh, atol=1e-6)


@pytest.mark.parametrize(
    ("anchor", "paraphrase", "unrelated"),
    [
        (
            "The cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "Interest rates rose by half a percent.",
        ),
        (
            "My favourite food is pizza.",
            "I love eating pizza more than anything.",
            "The train to Berlin leaves at noon.",
        ),
        (
            "How do I reset my password?",
            "I forgot my password and need to change it.",
            "Photosynthesis converts light into chemical energy.",
        ),
    ],
)
async def test_a_paraphrase_is_closer_than_an_unrelated_sentence(
    local: LocalEmbedder, anchor: str, paraphrase: str, unrelated: str
) -> None:
    a, p, u = await local.embed([anchor, paraphrase, unrelated])
    assert _cosine(a, p) > _cosine(a, u) + 0.2


async def test_a_batch_gives_the_vectors_of_single_calls_in_order(local: LocalEmbedder) -> None:
    texts = [f"note {i}: " + "memory " * (i * 7 % 40) for i in range(19)] + ["", "short"]
    batch = await local.embed(texts)
    singles = np.stack([(await local.embed([text]))[0] for text in texts])
    assert np.allclose(batch, singles, atol=1e-5)


async def test_long_input_is_cut_at_the_token_limit(local: LocalEmbedder) -> None:
    # 254 word pieces fill the window with [CLS] and [SEP]; what follows is never read.
    prefix = "word " * 254
    apples, bananas, short = await local.embed(
        [prefix + "apple " * 5000, prefix + "banana " * 5000, "word " * 10 + "banana"]
    )
    assert np.array_equal(apples, bananas)
    assert not np.allclose(bananas, short)


async def test_embedding_nothing_gives_an_empty_array(local: LocalEmbedder) -> None:
    vectors = await local.embed([])
    assert vectors.shape == (0, 384)


async def test_the_model_is_loaded_once_however_many_embedders_ask_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = 0
    real_model = local_module._LoadedModel

    def counting_model(*args: object) -> object:
        nonlocal loads
        loads += 1
        return real_model(*args)

    monkeypatch.setattr(local_module, "_loaded", {})
    monkeypatch.setattr(local_module, "_LoadedModel", counting_model)
    embedders = [LocalEmbedder(ALL_MINILM_L6_V2, threads=1) for _ in range(4)]
    results = await asyncio.gather(*(embedder.embed(["same text"]) for embedder in embedders))
    assert loads == 1
    assert all(np.array_equal(result, results[0]) for result in results)


async def test_a_model_file_other_than_the_pinned_one_is_refused(tmp_path: Path) -> None:
    altered = tmp_path / "model.onnx"
    altered.write_bytes(ALL_MINILM_L6_V2.onnx_file().read_bytes()[:-1] + b"\0")
    model = dataclasses.replace(ALL_MINILM_L6_V2, name="altered-minilm", onnx_file=lambda: altered)
    with pytest.raises(LocalModelError, match="not the pinned file") as caught:
        await LocalEmbedder(model).embed(["a"])
    assert caught.value.reason == "PROVIDER_UNAVAILABLE"
    missing = dataclasses.replace(model, name="missing-minilm", onnx_file=lambda: tmp_path / "no")
    with pytest.raises(LocalModelError, match="cannot be read"):
        await LocalEmbedder(missing).embed(["a"])


async def test_the_event_loop_keeps_running_while_a_batch_is_embedded() -> None:
    embedder = LocalEmbedder(ALL_MINILM_L6_V2, batch_size=512)
    await embedder.load()
    texts = [f"sentence number {i} about memory, agents and recall" for i in range(256)]
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    ticks_before = ticks
    vectors = await embedder.embed(texts)  # one inference run of all 256 texts
    done.set()
    await task
    assert vectors.shape == (256, 384)
    # Blocking inference would let the ticker run only around the few awaits
    # of embed(); in a worker thread it runs all along.
    assert ticks - ticks_before > 50


# --- OpenAI-style providers ---------------------------------------------------------------


_open_clients: list[openai.AsyncOpenAI] = []


def _client(provider: FakeProvider, max_retries: int = 2) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(
        api_key="test-key", base_url=provider.openai_base_url, max_retries=max_retries
    )
    _open_clients.append(client)
    return client


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _open_clients:
        await _open_clients.pop().close()


def _embedding_requests(provider: FakeProvider) -> list[dict[str, object]]:
    return [
        request.body or {}
        for request in provider.requests
        if request.path == "/openai/v1/embeddings"
    ]


def _quick_429() -> ErrorReply:
    return ErrorReply(
        429, "rate limit exceeded", code="rate_limit_exceeded", headers={"retry-after-ms": "1"}
    )


async def test_texts_are_sent_in_batches_and_come_back_in_order(
    fake_provider: FakeProvider,
) -> None:
    embedder = OpenAIEmbedder(_client(fake_provider), "openai", "fake-embed", batch_size=4)
    texts = [f"text {i}" for i in range(10)]
    vectors = await embedder.embed(texts)
    bodies = _embedding_requests(fake_provider)
    assert len(bodies) == math.ceil(len(texts) / 4)
    assert [body["input"] for body in bodies] == [texts[0:4], texts[4:8], texts[8:10]]
    assert all(body["model"] == "fake-embed" and "dimensions" not in body for body in bodies)
    expected = np.array([fake_embedding(text, 8) for text in texts], dtype=np.float32)
    assert np.array_equal(vectors, expected)
    assert embedder.dimension == 8  # learned from the first answer
    assert embedder.handle == "openai/fake-embed"


async def test_dimensions_are_passed_through(fake_provider: FakeProvider) -> None:
    embedder = OpenAIEmbedder(
        _client(fake_provider), "openai", "text-embedding-3-small", dimensions=64
    )
    assert embedder.dimension == 64
    vectors = await embedder.embed(["alpha", "beta"])
    assert fake_provider.last_request.body is not None
    assert fake_provider.last_request.body["dimensions"] == 64
    assert vectors.shape == (2, 64)


async def test_a_model_that_cannot_shorten_its_vectors_is_refused(
    fake_provider: FakeProvider,
) -> None:
    with pytest.raises(ProviderRejectedRequestError, match="1536"):
        OpenAIEmbedder(_client(fake_provider), "openai", "text-embedding-ada-002", dimensions=256)


async def test_vectors_of_the_wrong_size_are_an_invalid_response(
    fake_provider: FakeProvider,
) -> None:
    # The model's own size is 1536; the fake answers with 8.
    embedder = OpenAIEmbedder(_client(fake_provider), "openai", "text-embedding-3-small")
    with pytest.raises(InvalidProviderResponseError, match="8-dimensional"):
        await embedder.embed(["alpha"])


async def test_empty_text_is_sent_as_a_blank(fake_provider: FakeProvider) -> None:
    embedder = OpenAIEmbedder(_client(fake_provider), "openai", "fake-embed")
    vectors = await embedder.embed(["", "x"])
    assert fake_provider.last_request.body is not None
    assert fake_provider.last_request.body["input"] == [" ", "x"]
    assert vectors.shape == (2, 8)
    assert (await embedder.embed([])).shape == (0, 8)


async def test_a_rate_limited_request_is_retried(fake_provider: FakeProvider) -> None:
    fake_provider.script_embedding_errors(_quick_429(), ErrorReply.server_error(retry_after_ms=1))
    embedder = OpenAIEmbedder(_client(fake_provider, max_retries=2), "openai", "fake-embed")
    vectors = await embedder.embed(["retry me"])
    assert len(_embedding_requests(fake_provider)) == 3
    assert np.allclose(vectors[0], fake_embedding("retry me", 8))


async def test_rate_limiting_beyond_the_retries_is_reported_with_its_advice(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script_embedding_errors(_quick_429(), _quick_429())
    embedder = OpenAIEmbedder(_client(fake_provider, max_retries=1), "openai", "fake-embed")
    with pytest.raises(ProviderRateLimitedError) as caught:
        await embedder.embed(["a"])
    assert caught.value.provider == "openai"
    assert caught.value.retry_after == pytest.approx(0.001)
    assert len(_embedding_requests(fake_provider)) == 2


async def test_server_errors_beyond_the_retries_mean_unavailable(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script_embedding_errors(
        *(ErrorReply.server_error(503, retry_after_ms=1) for _ in range(3))
    )
    embedder = OpenAIEmbedder(_client(fake_provider, max_retries=2), "vllm", "fake-embed")
    with pytest.raises(ProviderUnavailableError, match="503"):
        await embedder.embed(["a"])
    assert len(_embedding_requests(fake_provider)) == 3


async def test_a_refused_key_is_not_retried(fake_provider: FakeProvider) -> None:
    fake_provider.script_embedding_errors(ErrorReply.bad_key())
    embedder = OpenAIEmbedder(_client(fake_provider, max_retries=3), "openai", "fake-embed")
    with pytest.raises(ProviderAuthError):
        await embedder.embed(["a"])
    assert len(_embedding_requests(fake_provider)) == 1


# --- the registry -------------------------------------------------------------------------


async def test_the_default_handle_is_the_local_model() -> None:
    registry = EmbeddingRegistry.from_settings(Settings(), {})
    embedder = registry.resolve()
    assert registry.default_handle == "local/all-minilm-l6-v2"
    assert isinstance(embedder, LocalEmbedder)
    assert embedder.handle == "local/all-minilm-l6-v2"
    assert registry.resolve("local/all-minilm-l6-v2") is embedder
    assert registry.names == ["local"]
    await registry.close()


def test_the_default_handle_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGRAM_DEFAULT_EMBEDDING", "ollama/nomic-embed-text")
    monkeypatch.setenv("ENGRAM_LOCAL_EMBEDDING_THREADS", "2")
    settings = Settings()
    assert settings.default_embedding == "ollama/nomic-embed-text"
    assert settings.local_embedding_threads == 2
    monkeypatch.setenv("ENGRAM_DEFAULT_EMBEDDING", "no-provider-part")
    with pytest.raises(ValidationError):
        Settings()


async def test_providers_come_from_the_llm_provider_variables(
    fake_provider: FakeProvider,
) -> None:
    env = {
        "OPENAI_API_KEY": "sk-embed",
        "OPENAI_BASE_URL": fake_provider.openai_base_url,
        # Ollama's variable names the server root; /v1 is appended.
        "OLLAMA_BASE_URL": fake_provider.openai_base_url.removesuffix("/v1"),
        "ANTHROPIC_API_KEY": "sk-ant",
    }
    registry = EmbeddingRegistry.from_settings(Settings(embedding_batch_size=2), env)
    try:
        assert registry.names == ["local", "ollama", "openai"]
        small = registry.resolve("openai/text-embedding-3-small", dimensions=16)
        assert (await small.embed(["a", "b", "c"])).shape == (3, 16)
        assert fake_provider.last_request.headers["authorization"] == "Bearer sk-embed"
        assert len(_embedding_requests(fake_provider)) == 2  # batches of two
        nomic = registry.resolve("ollama/nomic-embed-text")
        assert (await nomic.embed(["a"])).shape == (1, 8)
        assert fake_provider.last_request.body is not None
        assert fake_provider.last_request.body["model"] == "nomic-embed-text"
        # Anthropic has no embeddings API, so it is no embedding provider.
        with pytest.raises(ProviderNotConfiguredError, match="anthropic/x"):
            registry.resolve("anthropic/x")
    finally:
        await registry.close()


@pytest.mark.parametrize(
    ("handle", "dimensions", "error"),
    [
        ("groq/some-model", None, ProviderNotConfiguredError),
        ("openai", None, ProviderNotConfiguredError),
        ("local/no-such-model", None, ProviderRejectedRequestError),
        ("local/all-minilm-l6-v2", 768, ProviderRejectedRequestError),
    ],
)
def test_unusable_handles_are_refused(
    handle: str, dimensions: int | None, error: type[Exception]
) -> None:
    registry = EmbeddingRegistry.from_settings(Settings(), {})
    with pytest.raises(error):
        registry.resolve(handle, dimensions=dimensions)


async def test_the_fake_also_answers_in_the_sdks_default_base64(
    fake_provider: FakeProvider,
) -> None:
    # Our adapter asks for floats; the SDK's own default is base64, which the fake must speak
    # too so that tests of other callers see the same vectors.
    client = _client(fake_provider)
    response = await client.embeddings.create(model="fake-embed", input=["alpha"])
    assert fake_provider.last_request.body is not None
    assert fake_provider.last_request.body["encoding_format"] == "base64"
    assert np.allclose(response.data[0].embedding, fake_embedding("alpha", 8))
