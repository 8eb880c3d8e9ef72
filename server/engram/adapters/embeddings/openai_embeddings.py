"""Embeddings from OpenAI, and from every server that speaks its ``/embeddings`` API
(Azure OpenAI, Together, Ollama, vLLM, LM Studio, llama.cpp server), via the official SDK.

Transient failures (429, 408, 409, 5xx, dropped connections) are retried by
the SDK with exponential backoff and jitter, honouring the server's
``retry-after``/``retry-after-ms`` advice; what is still failing after the
configured number of retries becomes one of the neutral provider errors of
``engram.adapters.llm.errors``, the same the chat adapters raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import openai

from engram.adapters.embeddings.embedder import DEFAULT_BATCH_SIZE, Vectors, batches, no_vectors
from engram.adapters.llm.errors import InvalidProviderResponseError, ProviderRejectedRequestError
from engram.adapters.llm.openai_chat import translate_error

# OpenAI's embedding models and the length of their vectors.  The v3 models
# can return shorter vectors (the ``dimensions`` parameter); ada-002 cannot.
NATIVE_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_FIXED_SIZE_MODELS = frozenset({"text-embedding-ada-002"})


class OpenAIEmbedder:
    """One embedding model behind an OpenAI-style endpoint.

    ``client`` is the provider's SDK client, shared with the provider's other
    models; the registry owns and closes it.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        provider: str,
        model: str,
        *,
        dimensions: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if dimensions is not None and dimensions < 1:
            raise ProviderRejectedRequestError(
                provider, f"dimensions must be at least 1, got {dimensions}"
            )
        native = NATIVE_DIMENSIONS.get(model)
        if model in _FIXED_SIZE_MODELS and dimensions not in (None, native):
            raise ProviderRejectedRequestError(
                provider, f"{model} only returns {native}-dimensional vectors"
            )
        self._client = client
        self.provider = provider
        self.model = model
        self.batch_size = batch_size
        # Sent only when it asks for something other than the model's own size:
        # many compatible servers reject a parameter they do not know.
        self._requested = None if dimensions == native else dimensions
        self._dimension = dimensions or native

    @property
    def handle(self) -> str:
        return f"{self.provider}/{self.model}"

    @property
    def dimension(self) -> int | None:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return no_vectors(self._dimension)
        parts = [await self._embed_batch(batch) for batch in batches(texts, self.batch_size)]
        return np.concatenate(parts)

    async def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        parameters: dict[str, Any] = {
            "model": self.model,
            # OpenAI refuses an empty string; a blank one gets the model's vector
            # for "no content", as the local model gives for an empty text.
            "input": [text or " " for text in texts],
            # Floats, not the SDK's default base64: not every compatible server
            # implements base64.
            "encoding_format": "float",
        }
        if self._requested is not None:
            parameters["dimensions"] = self._requested
        try:
            response = await self._client.embeddings.create(**parameters)
        except openai.OpenAIError as error:
            raise translate_error(self.provider, error) from error
        return self._vectors(response, len(texts))

    def _vectors(self, response: Any, expected: int) -> Vectors:
        """The response's vectors in input order, checked for count and size."""
        items = sorted(response.data, key=lambda item: item.index)
        if [item.index for item in items] != list(range(expected)):
            raise InvalidProviderResponseError(
                self.provider, f"expected {expected} embeddings, got {len(items)}"
            )
        try:
            vectors = np.array([item.embedding for item in items], dtype=np.float32)
        except (TypeError, ValueError) as error:  # ragged or not numbers
            raise InvalidProviderResponseError(
                self.provider, "the embeddings are not vectors of one size"
            ) from error
        size = vectors.shape[1] if vectors.ndim == 2 else 0
        if size == 0 or (self._dimension is not None and size != self._dimension):
            raise InvalidProviderResponseError(
                self.provider,
                f"{self.model} returned {size}-dimensional vectors, "
                f"expected {self._dimension or 'at least one dimension'}",
            )
        # A model not in our table tells its size with its first answer; later
        # answers are held to it.
        self._dimension = size
        return vectors
