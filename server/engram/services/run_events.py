"""A run's events as its stream carries them: numbered once, encoded once, logged.

A turn yields what happens (:mod:`engram.services.runtime.turn` events); a
client sees a numbered stream that ends with a stop reason and usage, or an
error.  The numbering happens here, once, in the process running the run, so
that every replica replaying the run's log shows the same ``seq`` for the same
event: that is what makes a stream resumable.

How a record becomes bytes is the gRPC layer's business (the wire format is
its contract); it hands the services a :data:`RunEventEncoder`, so neither
this module nor the event log knows about protobuf.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engram.adapters.event_log.base import LoggedEvent
from engram.services.runtime.turn import StepEvent, StepStarted, TurnFinished


@dataclass(frozen=True, slots=True)
class RunStop:
    """Why the run ended (a value of :class:`~engram.services.runtime.turn.StopReason`,
    or one of the run-level reasons: ``owner_lost``, ``interrupted``, ``error``...)."""

    stop_reason: str


@dataclass(frozen=True, slots=True)
class RunUsage:
    """The run's token usage, summed over its stored steps."""

    prompt_tokens: int
    completion_tokens: int
    steps: int


@dataclass(frozen=True, slots=True)
class RunFailure:
    """The error that ended the run; encoded as the status a unary call would get."""

    error: BaseException


RecordBody = StepEvent | RunStop | RunUsage | RunFailure


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One numbered event of a run, ready to encode."""

    run_id: str
    seq: int
    step: int  # the step it belongs to; 0 for the run's ending
    body: RecordBody
    final: bool = False  # the run's last event

    @property
    def message_id(self) -> str:
        return getattr(self.body, "message_id", "")


# Turns a record into the bytes the run's log keeps and clients receive.
RunEventEncoder = Callable[[RunRecord], bytes]


class RunNumbering:
    """Numbers one run's events from ``after + 1``, tracking the step they belong to."""

    def __init__(self, run_id: str, after: int = 0) -> None:
        self.run_id = run_id
        self.seq = after
        self.step = 0

    def records(self, event: object) -> list[RunRecord]:
        """The records a loop event becomes (none for bookkeeping events)."""
        if isinstance(event, StepStarted):
            self.step = event.step
            return []
        if isinstance(event, StepEvent):
            return [self._next(event, self.step)]
        if isinstance(event, TurnFinished):
            usage = RunUsage(event.prompt_tokens, event.completion_tokens, event.steps)
            return self.ending(event.stop_reason.value, usage)
        return []

    def ending(self, stop_reason: str, usage: RunUsage) -> list[RunRecord]:
        """A stream's normal end: the stop reason, then the usage (the final event)."""
        return [self._next(RunStop(stop_reason), 0), self._next(usage, 0, final=True)]

    def failure(self, error: BaseException) -> list[RunRecord]:
        """A failed run's end: the error alone, as the final event."""
        return [self._next(RunFailure(error), 0, final=True)]

    def _next(self, body: RecordBody, step: int, *, final: bool = False) -> RunRecord:
        self.seq += 1
        return RunRecord(self.run_id, self.seq, step, body, final)


def logged(record: RunRecord, encode: RunEventEncoder) -> LoggedEvent:
    """The record as its run's log keeps it."""
    return LoggedEvent(record.seq, encode(record), record.final)
