"""What every embedding adapter offers: texts in, one unit of meaning per text out.

Vectors travel as one float32 array of shape ``(len(texts), dimension)``
rather than lists of Python floats: a batch of 256 texts at 1536 dimensions
is 393,216 numbers, and both vector stores (pgvector and sqlite-vec) accept
the array's buffer as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
"""Embeddings of a batch: one row per text, in the order the texts were given."""

DEFAULT_BATCH_SIZE = 256
"""Texts per request to a remote provider.  OpenAI accepts up to 2048, but smaller requests
retry cheaper and local servers (Ollama, vLLM) handle them with less memory."""

_T = TypeVar("_T")


class Embedder(Protocol):
    """One embedding model, ready to use.

    ``handle`` is ``provider/model`` as agents record it, so that every path
    that embeds for an agent (inserting passages, searching them) can ask the
    registry for the same model again.
    """

    @property
    def handle(self) -> str: ...

    @property
    def dimension(self) -> int | None:
        """The length of every vector, or None while it is unknown (a remote model
        whose size is not in our table and that has not answered yet)."""
        ...

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """The vectors of ``texts`` in their order; an empty sequence gives ``(0, dim)``."""
        ...


def batches(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """``items`` in consecutive slices of at most ``size``."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def no_vectors(dimension: int | None) -> Vectors:
    """The result of embedding nothing."""
    return np.zeros((0, dimension or 0), dtype=np.float32)
