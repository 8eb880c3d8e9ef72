"""Which embedding models this server can use, found by handle.

An embedding handle is ``provider/model``, like a model handle:
``local/all-minilm-l6-v2`` runs in this process, anything else goes to an
OpenAI-style endpoint configured by the same variables as the LLM providers
(``openai/text-embedding-3-small`` needs ``OPENAI_API_KEY``,
``ollama/nomic-embed-text`` needs ``OLLAMA_BASE_URL``, ...).  An agent keeps
its handle, so every path that embeds for it resolves the same model here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engram.adapters.embeddings.embedder import DEFAULT_BATCH_SIZE, Embedder
from engram.adapters.embeddings.local import LOCAL_MODELS, LOCAL_PROVIDER, LocalEmbedder
from engram.adapters.llm.errors import ProviderRejectedRequestError
from engram.adapters.llm.registry import (
    KNOWN_PROVIDERS,
    ProviderKind,
    ProviderNotConfiguredError,
)
from engram.config.settings import Settings

if TYPE_CHECKING:
    # Imported where a client is made instead: the SDK costs about 1 s of CPU to import,
    # which a process with no OpenAI-style provider configured need not pay at startup.
    import openai


@dataclass(frozen=True)
class EmbeddingOptions:
    """How embedders are built; from :class:`~engram.config.settings.Settings`."""

    default_handle: str = "local/all-minilm-l6-v2"
    batch_size: int = DEFAULT_BATCH_SIZE  # texts per request to a remote provider
    max_retries: int = 4  # per request, on rate limits and transient failures
    timeout: float = 60.0  # seconds per request attempt
    local_batch_size: int = 16  # texts per inference run of a local model
    local_threads: int = 0  # onnxruntime threads; 0 is one per physical core

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddingOptions:
        return cls(
            default_handle=settings.default_embedding,
            batch_size=settings.embedding_batch_size,
            max_retries=settings.embedding_max_retries,
            timeout=settings.embedding_timeout_seconds,
            local_batch_size=settings.local_embedding_batch_size,
            local_threads=settings.local_embedding_threads,
        )


def client_for(
    kind: ProviderKind, env: Mapping[str, str], options: EmbeddingOptions
) -> openai.AsyncOpenAI:
    """An SDK client for an OpenAI-style provider configured in ``env``."""
    import openai

    key = env.get(kind.key_variable, "") if kind.key_variable else ""
    # Azure's v1 API takes the key in its own header (as the chat adapter sends it).
    headers = {"api-key": key} if kind.name == "azure" and key else None
    return openai.AsyncOpenAI(
        # Local servers (Ollama, vLLM) accept any key, but the SDK insists on one.
        api_key=key or "not-needed",
        base_url=kind.base_url(env),
        max_retries=options.max_retries,
        timeout=options.timeout,
        default_headers=headers,
    )


class EmbeddingRegistry:
    """The embedding providers of this process: the local models and the configured endpoints.

    Embedders are built once per handle and dimension size, and share their
    provider's HTTP client.
    """

    def __init__(
        self,
        clients: Mapping[str, openai.AsyncOpenAI],
        options: EmbeddingOptions | None = None,
    ) -> None:
        self._clients = dict(clients)
        self.options = options or EmbeddingOptions()
        self._embedders: dict[tuple[str, int | None], Embedder] = {}

    @classmethod
    def from_settings(cls, settings: Settings, env: Mapping[str, str]) -> EmbeddingRegistry:
        """The registry for this process: options from ``settings``, providers from ``env``."""
        options = EmbeddingOptions.from_settings(settings)
        clients = {
            kind.name: client_for(kind, env, options)
            for kind in KNOWN_PROVIDERS
            if kind.api == "openai" and kind.configured(env)
        }
        return cls(clients, options)

    @property
    def names(self) -> list[str]:
        """The providers an embedding handle may name."""
        return sorted([LOCAL_PROVIDER, *self._clients])

    @property
    def default_handle(self) -> str:
        return self.options.default_handle

    def resolve(self, handle: str | None = None, *, dimensions: int | None = None) -> Embedder:
        """The embedder for ``handle`` (the default one when None).

        ``dimensions`` asks a remote model that supports it for shorter
        vectors; a local model's size is fixed.
        """
        handle = handle or self.default_handle
        key = (handle, dimensions)
        embedder = self._embedders.get(key)
        if embedder is None:
            embedder = self._embedders[key] = self._build(handle, dimensions)
        return embedder

    def _build(self, handle: str, dimensions: int | None) -> Embedder:
        provider, _, model = handle.partition("/")
        if provider == LOCAL_PROVIDER:
            return self._local(model, dimensions)
        client = self._clients.get(provider)
        if client is None or not model:
            raise ProviderNotConfiguredError(
                provider or handle,
                f"no embedding provider is configured for the handle {handle!r} "
                f"(available: {', '.join(self.names)}); set the provider's API key or "
                "base URL variable, or use a local model",
            )
        from engram.adapters.embeddings.openai_embeddings import OpenAIEmbedder

        return OpenAIEmbedder(
            client, provider, model, dimensions=dimensions, batch_size=self.options.batch_size
        )

    def _local(self, name: str, dimensions: int | None) -> LocalEmbedder:
        model = LOCAL_MODELS.get(name)
        if model is None:
            known = ", ".join(f"{LOCAL_PROVIDER}/{known}" for known in sorted(LOCAL_MODELS))
            raise ProviderRejectedRequestError(
                LOCAL_PROVIDER, f"unknown local embedding model {name!r} (available: {known})"
            )
        if dimensions not in (None, model.dimension):
            raise ProviderRejectedRequestError(
                LOCAL_PROVIDER, f"{model.handle} only returns {model.dimension}-dimensional vectors"
            )
        return LocalEmbedder(
            model, batch_size=self.options.local_batch_size, threads=self.options.local_threads
        )

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
