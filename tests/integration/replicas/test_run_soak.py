"""Soak: 200 concurrent streamed turns over two replicas, clients dropping and resuming at random.

Each turn belongs to its own agent and is started on a random replica with a
request id.  Its client drops the stream at random (after a random number of
events, sometimes before the first) up to a few times, and each time comes
back on a random replica: with StreamRun from the last seq it saw, or, when
it saw nothing yet, by sending the same request again (which must attach to
the run, not start another).  What the client pieces together must be the
whole run: seq 1..n once each, in order, ending ``stop_reason`` then
``usage``, with the model's full text; every run must end COMPLETED, and the
model must have been called once per turn.

Bounded: a fixed number of turns and drops, and a deadline on the whole.
The counts print with ``-s``.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from engram.v1 import message_service_pb2, run_pb2
from support.fake_provider import FakeProvider, Reply
from support.replicas import Replica, ReplicaClient

TurnEvent = message_service_pb2.TurnEvent

TURNS = 200
PIECES = 20  # streamed pieces per answer: PIECES + 2 events per turn
MAX_DROPS = 4  # per turn
DROP_CHANCE = 0.7  # of each stream a client reads
DROP_WITHIN = 8  # a drop comes after 1 to this many events of a stream
EARLY_DROP_CHANCE = 0.15  # of a drop: before reading any event
SOAK_SECONDS = 150.0
SEED = 20_261_126
ANSWER = "".join(chr(ord("a") + i % 26) * 2 for i in range(PIECES))
REPLY = Reply(text=ANSWER, piece_chars=2, chunk_delay=0.05)

pytestmark = pytest.mark.timeout(300)


REPLICA_SETTINGS = {
    "ENGRAM_STREAM_COALESCE_MS": "0",
    "ENGRAM_STREAM_PING_INTERVAL_SECONDS": "1",
    # Short enough that a run orphaned by a dropped start would show as
    # owner_lost within the soak instead of hanging it.
    "ENGRAM_RUN_LEASE_SECONDS": "5",
}


@dataclass
class Counts:
    turns: int = 0
    events: int = 0
    pings: int = 0
    disconnects: int = 0
    early_disconnects: int = 0  # before the stream's first event
    resumes: int = 0  # StreamRun from the last seq seen
    retries: int = 0  # the same StreamMessage (request id) sent again
    replica_switches: int = 0  # came back on the other replica than the one just left
    turns_dropped_twice_or_more: int = 0
    per_replica: dict[str, int] = field(default_factory=dict)


@dataclass
class Turn:
    """One client's view of one turn: what it received, pieced together."""

    agent: str
    rng: random.Random
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    events: list[TurnEvent] = field(default_factory=list)

    @property
    def run(self) -> str:
        return self.events[0].run

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1].WhichOneof("event") == "usage"


def _drop_after(rng: random.Random, drops_so_far: int) -> int | None:
    """How many events to read before dropping this stream; None to read it to its end."""
    if drops_so_far >= MAX_DROPS or rng.random() >= DROP_CHANCE:
        return None
    if rng.random() < EARLY_DROP_CHANCE:
        return 0
    return rng.randint(1, DROP_WITHIN)


async def _read(call: Any, turn: Turn, limit: int | None, counts: Counts) -> None:
    """Append the stream's events to ``turn``, dropping the stream after ``limit`` of them."""
    if limit == 0:
        call.cancel()
        return
    received = 0
    async for event in call:
        if event.WhichOneof("event") == "ping":
            counts.pings += 1
            continue
        turn.events.append(event)
        received += 1
        if limit is not None and received >= limit:
            call.cancel()
            return


async def _converse(turn: Turn, clients: dict[str, ReplicaClient], counts: Counts) -> None:
    names = sorted(clients)
    where = turn.rng.choice(names)
    request = message_service_pb2.StreamMessageRequest(
        agent=turn.agent, text="Go on.", stream_tokens=True, request_id=turn.request_id
    )
    call = clients[where].messages.StreamMessage(request)
    drops = 0
    while True:
        counts.per_replica[where] = counts.per_replica.get(where, 0) + 1
        limit = _drop_after(turn.rng, drops)
        before = len(turn.events)
        await _read(call, turn, limit, counts)
        if turn.ended:
            counts.turns_dropped_twice_or_more += drops >= 2
            return
        if limit is None:
            raise AssertionError(f"a stream of {turn.agent} closed before the run's end")
        drops += 1
        counts.disconnects += 1
        counts.early_disconnects += len(turn.events) == before
        previous, where = where, turn.rng.choice(names)
        counts.replica_switches += previous != where
        if turn.events:
            counts.resumes += 1
            call = clients[where].runs.StreamRun(
                message_service_pb2.StreamRunRequest(name=turn.run, after_seq=turn.events[-1].seq)
            )
        else:
            counts.retries += 1
            call = clients[where].messages.StreamMessage(request)


async def _new_agents(clients: list[ReplicaClient], count: int) -> list[str]:
    gate = asyncio.Semaphore(16)

    async def one(index: int) -> str:
        async with gate:
            return await clients[index % len(clients)].new_agent(f"soak-{index}")

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def _check(turn: Turn) -> None:
    events = turn.events
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), turn.agent
    assert {e.run for e in events} == {turn.run}
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["assistant_message"] * PIECES + ["stop_reason", "usage"], kinds
    assert events[-2].stop_reason.stop_reason == run_pb2.STOP_REASON_END_TURN
    assert "".join(e.assistant_message.text for e in events[:-2]) == ANSWER


async def test_streamed_turns_survive_random_disconnects_and_resumes(
    replica_pair: list[Replica], provider: FakeProvider
) -> None:
    clients = {replica.name: ReplicaClient.connect(replica) for replica in replica_pair}
    counts = Counts()
    try:
        agents = await _new_agents(list(clients.values()), TURNS)
        calls_before = sum(1 for r in provider.requests if r.path.endswith("/chat/completions"))
        provider.script(*[REPLY] * TURNS)
        turns = [Turn(agent, random.Random(SEED + i)) for i, agent in enumerate(agents)]
        async with asyncio.timeout(SOAK_SECONDS):
            outcomes = await asyncio.gather(
                *(_converse(turn, clients, counts) for turn in turns), return_exceptions=True
            )
        failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failed:
            print(f"\n{len(failed)} of {TURNS} turns failed; the first: {failed[0]!r}")
            raise failed[0]

        for turn in turns:
            _check(turn)
        counts.turns = len(turns)
        counts.events = sum(len(turn.events) for turn in turns)
        runs = await clients["a"].runs.ListRuns(
            message_service_pb2.ListRunsRequest(page_size=1000), timeout=30
        )
        statuses = {run.name: run.status for run in runs.runs}
        # One run per turn, however often its start was retried, and every one completed.
        assert sorted(statuses) == sorted(turn.run for turn in turns)
        assert set(statuses.values()) == {run_pb2.RUN_STATUS_COMPLETED}
        calls = sum(1 for r in provider.requests if r.path.endswith("/chat/completions"))
        assert calls - calls_before == TURNS
        assert provider.remaining_replies == 0
    finally:
        for client in clients.values():
            await client.close()
        print(
            f"\nsoak: {counts.turns} turns, {counts.events} events, "
            f"{counts.disconnects} disconnects ({counts.early_disconnects} before any event), "
            f"{counts.resumes} resumes (StreamRun), {counts.retries} retried starts "
            f"(same request id), {counts.replica_switches} came back on the other replica, "
            f"{counts.turns_dropped_twice_or_more} turns dropped two to {MAX_DROPS} times, "
            f"{counts.pings} pings; streams per replica {counts.per_replica}"
        )
    # Enough of each path was exercised to mean something.
    assert counts.resumes > TURNS // 2 and counts.retries > 0 and counts.replica_switches > 0
