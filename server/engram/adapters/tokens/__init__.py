"""Counting tokens: exactly with tiktoken for OpenAI models, by a calibrated estimate elsewhere.

* :mod:`.counter` - the :class:`TokenCounter` protocol and how a chat message,
  the tool schemas and a whole model call are charged on top of their text;
* :mod:`.estimate` - the estimate for providers whose tokenizer we do not have;
* :mod:`.openai` - tiktoken encodings, and which one each OpenAI model uses;
* :mod:`.selection` - the counter for an agent's model handle, loading
  encodings lazily, off the event loop, and falling back to the estimate;
* :mod:`.offline` - filling tiktoken's cache without the network.
"""

from engram.adapters.tokens.counter import (
    TokenCounter,
    count_context,
    count_message,
    count_messages,
    count_tools,
)
from engram.adapters.tokens.estimate import ESTIMATE, EstimateCounter
from engram.adapters.tokens.openai import TiktokenCounter, encoding_for_handle
from engram.adapters.tokens.selection import TokenCounters, default_counters

__all__ = [
    "ESTIMATE",
    "EstimateCounter",
    "TiktokenCounter",
    "TokenCounter",
    "TokenCounters",
    "count_context",
    "count_message",
    "count_messages",
    "count_tools",
    "default_counters",
    "encoding_for_handle",
]
