"""The coalescer's rules, on a clock the test moves by hand."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Self

from engram.services.runtime.delta_coalescer import DeltaCoalescer
from engram.services.runtime.turn import AssistantEvent, ReasoningEvent, ToolCallDeltaEvent


@dataclass(frozen=True)
class Piece:
    channel: str
    text: str

    @property
    def size(self) -> int:
        return len(self.text)

    def followed_by(self, later: Self) -> Self:
        return replace(self, text=self.text + later.text)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_zero_window_passes_every_piece_through() -> None:
    coalescer = DeltaCoalescer[Piece](0)
    out = [coalescer.add(Piece("a", c)) for c in "hello"]
    assert out == [[Piece("a", c)] for c in "hello"]
    assert coalescer.flush() == []


def test_the_first_piece_goes_at_once_and_the_next_wait_for_the_window() -> None:
    clock = Clock()
    coalescer = DeltaCoalescer[Piece](0.05, clock=clock)
    assert coalescer.add(Piece("a", "H")) == [Piece("a", "H")]
    clock.now += 0.01
    assert coalescer.add(Piece("a", "e")) == []
    clock.now += 0.01
    assert coalescer.add(Piece("a", "l")) == []
    assert coalescer.holding
    clock.now += 0.04  # 0.06 since the last release
    assert coalescer.add(Piece("a", "l")) == [Piece("a", "ell")]
    clock.now += 0.001
    assert coalescer.add(Piece("a", "o")) == []
    assert coalescer.flush() == [Piece("a", "o")]
    assert not coalescer.holding and coalescer.flush() == []


def test_many_instant_pieces_become_two() -> None:
    clock = Clock()
    coalescer = DeltaCoalescer[Piece](0.05, clock=clock)
    out = [piece for c in "x" * 200 for piece in coalescer.add(Piece("a", c))]
    out += coalescer.flush()
    assert [p.text for p in out] == ["x", "x" * 199]


def test_the_size_limit_releases_before_the_window() -> None:
    clock = Clock()
    coalescer = DeltaCoalescer[Piece](10.0, max_chars=5, clock=clock)
    assert coalescer.add(Piece("a", "1")) == [Piece("a", "1")]
    assert coalescer.add(Piece("a", "234")) == []
    assert coalescer.add(Piece("a", "56")) == [Piece("a", "23456")]


def test_channels_merge_apart_in_the_order_they_first_appeared() -> None:
    clock = Clock()
    coalescer = DeltaCoalescer[Piece](1.0, clock=clock)
    coalescer.add(Piece("first", ""))  # released at once: the window starts now
    for channel, text in [("b", "1"), ("c", "x"), ("b", "2"), ("c", "y"), ("b", "3")]:
        assert coalescer.add(Piece(channel, text)) == []
    assert coalescer.flush() == [Piece("b", "123"), Piece("c", "xy")]


def test_turn_pieces_merge_by_message_and_call() -> None:
    clock = Clock()
    coalescer = DeltaCoalescer[ReasoningEvent | AssistantEvent | ToolCallDeltaEvent](
        1.0, clock=clock
    )
    coalescer.add(ReasoningEvent("Hm", delta=True, message_id="m1"))
    pieces = [
        ReasoningEvent("m.", delta=True, message_id="m1"),
        AssistantEvent("Hi", delta=True, message_id="m1"),
        ToolCallDeltaEvent(0, "c0", "lookup", "", "m1"),
        ToolCallDeltaEvent(1, "c1", "lookup", '{"q":', "m1"),
        ToolCallDeltaEvent(0, "c0", "", '{"q":1}', "m1"),
        ToolCallDeltaEvent(1, "c1", "", "2}", "m1"),
        AssistantEvent(" there", delta=True, message_id="m1"),
    ]
    for piece in pieces:
        assert coalescer.add(piece) == []
    assert coalescer.flush() == [
        ReasoningEvent("m.", delta=True, message_id="m1"),
        AssistantEvent("Hi there", delta=True, message_id="m1"),
        ToolCallDeltaEvent(0, "c0", "lookup", '{"q":1}', "m1"),
        ToolCallDeltaEvent(1, "c1", "lookup", '{"q":2}', "m1"),
    ]
