"""Merging token-stream pieces so that a client is not sent one event per token.

A provider may send a piece every few milliseconds, often a single
character; each one as its own gRPC message costs the server and the client
far more than the text it carries.  The coalescer holds pieces back and
merges consecutive pieces of one *channel* (one part of one message: its
reasoning, its text, or the arguments of one of its tool calls) into one.

It needs no timer of its own, so a stream owns no background task that
could outlive it: held pieces go out

* when a new piece arrives and the window has passed since the last release
  (so the first piece of a stream goes out at once),
* when the held text reaches ``max_chars``,
* whenever the owner calls :meth:`DeltaCoalescer.flush`, which it must do
  before any event that is not a piece and at the end of the model's answer.

A piece may therefore wait longer than the window while the provider is
silent, but never past the next piece or the end of the answer.  The order of
pieces within a channel is always kept; held pieces of different channels go
out in the order their channels first appeared, which keeps each channel's
text intact when a provider interleaves them (parallel tool calls).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, Self, TypeVar

DEFAULT_MAX_CHARS = 2048
"""Held text that makes the coalescer release at once, whatever the window says."""


class Piece(Protocol):
    """What the coalescer needs from a piece: its channel, its size, and how to join two."""

    @property
    def channel(self) -> Hashable: ...

    @property
    def size(self) -> int: ...

    def followed_by(self, later: Self) -> Self:
        """This piece and ``later`` (of the same channel) as one."""
        ...


P = TypeVar("P", bound=Piece)


class DeltaCoalescer(Generic[P]):
    """Holds pieces for up to ``window`` seconds and merges those of a channel.

    A ``window`` of 0 (or less) turns coalescing off: every piece goes out as it
    comes.  ``clock`` is injectable so that the rules can be tested without
    waiting.
    """

    def __init__(
        self,
        window: float,
        max_chars: int = DEFAULT_MAX_CHARS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_chars = max_chars
        self._clock = clock
        self._held: dict[Hashable, P] = {}
        self._held_chars = 0
        self._last_release = -math.inf

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def add(self, piece: P) -> list[P]:
        """Take ``piece``; returns the pieces to send now (possibly none)."""
        if self.window <= 0:
            return [piece]
        earlier = self._held.get(piece.channel)
        self._held[piece.channel] = piece if earlier is None else earlier.followed_by(piece)
        self._held_chars += piece.size
        window_passed = self._clock() - self._last_release >= self.window
        if window_passed or self._held_chars >= self.max_chars:
            return self.flush()
        return []

    def flush(self) -> list[P]:
        """Every held piece, merged per channel; the coalescer is empty afterwards."""
        released = list(self._held.values())
        self._held.clear()
        self._held_chars = 0
        if released:
            self._last_release = self._clock()
        return released
