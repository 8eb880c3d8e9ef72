"""Exact counts for OpenAI models, with tiktoken's encodings.

Which encoding a model uses is tiktoken's own table where it knows the model
(:func:`tiktoken.encoding_name_for_model`); a model it does not know - an
Azure deployment, which its owner names freely, or a model newer than the
installed tiktoken - gets ``o200k_base``, the encoding of every OpenAI chat
model since gpt-4o.  Only the handle's provider decides whether tiktoken
applies at all: ``openai`` and ``azure`` serve OpenAI's models, and so does
OpenRouter for the models it names ``openai/...``.  Every other provider's
models have tokenizers of their own, for which the estimate is as good a
guess as o200k and costs no data file.
"""

from __future__ import annotations

import tiktoken

from engram.adapters.tokens.counter import MEMO_SIZE, memoized

DEFAULT_ENCODING = "o200k_base"
OPENAI_PROVIDERS = frozenset({"openai", "azure"})
# Gateways that serve OpenAI's models among others, under "openai/<model>".
OPENAI_PREFIXED_PROVIDERS = frozenset({"openrouter"})


def encoding_for_model(model: str) -> str:
    """The tiktoken encoding of an OpenAI model name (``gpt-4o`` -> ``o200k_base``)."""
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING


def encoding_for_handle(handle: str) -> str | None:
    """The encoding for a ``provider/model`` handle, or None when it is not an OpenAI model."""
    provider, _, model = handle.partition("/")
    if provider in OPENAI_PREFIXED_PROVIDERS:
        provider, _, model = model.partition("/")
    if provider not in OPENAI_PROVIDERS or not model:
        return None
    return encoding_for_model(model)


class TiktokenCounter:
    """Counts with a loaded tiktoken encoding (thread-safe; the encoder runs in Rust)."""

    exact = True

    def __init__(self, encoding: tiktoken.Encoding, *, memo_size: int = MEMO_SIZE) -> None:
        self._encoding = encoding
        self._count = memoized(self._tokenize, memo_size)

    @property
    def name(self) -> str:
        return self._encoding.name

    def count(self, text: str) -> int:
        return self._count(text)

    def _tokenize(self, text: str) -> int:
        # encode_ordinary: text that spells a special token is plain text to a chat API.
        return len(self._encoding.encode_ordinary(text))
