"""How many statements a turn sends to the database, on both engines.

A step's server overhead is mostly round trips to the database, so their
number is pinned here: a later change that adds a query to every turn or to
every step fails this test instead of slowly eroding the turn's latency
(``scripts/bench-turns`` measures the time itself).  The counts are of
statements the engine executes, plus the reads run straight on the driver
(:class:`~engram.store.agent_reads.AgentReader`), which the engine never sees;
SQLite's ``BEGIN`` statements are left out so that both engines count the
same work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from sqlalchemy import event

from engram.services.admin import ensure_default_identity
from engram.services.agents import AgentService, NewAgent
from engram.services.caller import Caller
from engram.services.messages import MessageService
from engram.services.runtime.turn import StopReason, TurnFinished
from engram.store.agent_reads import AgentReader
from engram.store.database import Database
from support.fake_provider import FakeProvider, Reply, ToolCall
from support.llm import fake_registry

# Before the first step: the agent read to pick its provider (on the driver);
# then one transaction that locks the agent, reads its state in one statement
# (last sequence number, whether a run is running, blocks, tools, passage
# count, attached files: engram.store.agent_state), and inserts the run and
# the user's message.  The buffer is not read when the agent's previous turn
# ran in this process (see engram.services.runtime.buffer_cache); otherwise it
# costs one more.
STATEMENTS_BEFORE_FIRST_STEP = 5
# Each step's checkpoint: the step, its messages (one statement for all of
# them), and the run's update.
STATEMENTS_PER_STEP = 3
# Connections taken from the pool: the starting transaction, then one
# checkpoint transaction per step.  The agent read takes none: it runs on a
# connection pinned for such reads (engram.store.pinned) since the warm-up.
CHECKOUTS_BEFORE_FIRST_STEP = 1


@dataclass
class Counts:
    statements: list[str] = field(default_factory=list)
    checkouts: int = 0


@contextmanager
def counting(database: Database) -> Iterator[Counts]:
    counts = Counts()
    engine = database.engine.sync_engine
    fetch = AgentReader.fetch

    async def counted_fetch(reader: AgentReader, *args: Any) -> Any:
        counts.statements.append(f"(on the driver) {reader._compiled.sql}")
        return await fetch(reader, *args)

    def on_execute(*args: Any) -> None:
        statement = str(args[2])
        if not statement.lstrip().upper().startswith("BEGIN"):
            counts.statements.append(statement)

    def on_checkout(*args: Any) -> None:
        counts.checkouts += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine.pool, "checkout", on_checkout)
    AgentReader.fetch = counted_fetch  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        AgentReader.fetch = fetch  # type: ignore[method-assign]
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine.pool, "checkout", on_checkout)


@dataclass
class World:
    caller: Caller
    database: Database
    service: MessageService
    agent_id: str
    fake: FakeProvider


@pytest.fixture
async def world(database: Database, fake_provider: FakeProvider) -> AsyncIterator[World]:
    caller = await ensure_default_identity(database)
    registry = fake_registry(fake_provider)
    view = await AgentService(database).create(
        caller,
        NewAgent(
            values={"display_name": "pal", "agent_type": "native", "model": "openai/gpt-test"},
            memory_blocks=[{"label": "human", "value": "Name: Ada"}],
        ),
        request_id="",
    )
    try:
        yield World(
            caller, database, MessageService(database, registry), view.agent.id, fake_provider
        )
    finally:
        await registry.close()


async def turn(world: World, text: str) -> TurnFinished:
    events = [e.event async for e in world.service.send(world.caller, world.agent_id, text)]
    last = events[-1]
    assert isinstance(last, TurnFinished)
    return last


@pytest.mark.parametrize("steps", [1, 3])
async def test_a_turn_costs_a_fixed_number_of_statements_per_step(world: World, steps: int) -> None:
    # A call of a tool the agent does not have comes back as an error without
    # touching the database, and (native loop) asks for another step.
    calls = [Reply(tool_calls=[ToolCall("no_such_tool", {}, id=f"c{n}")]) for n in range(1, steps)]
    world.fake.script(Reply(text="Warm."), *calls, Reply(text="Done."))
    await turn(world, "warm up")  # fills the caches: the provider's, the buffer's

    with counting(world.database) as counts:
        finished = await turn(world, "Hello")

    assert finished.stop_reason is StopReason.END_TURN
    assert len(counts.statements) == STATEMENTS_BEFORE_FIRST_STEP + STATEMENTS_PER_STEP * steps, (
        "\n".join(counts.statements)
    )
    assert counts.checkouts == CHECKOUTS_BEFORE_FIRST_STEP + steps


async def test_the_statement_count_does_not_grow_with_history(world: World) -> None:
    world.fake.script(*[Reply(text=f"Answer {n}.") for n in range(6)])
    counted = []
    for n in range(6):
        with counting(world.database) as counts:
            await turn(world, f"Message {n}")
        counted.append(len(counts.statements))
    # The agent's first turn reads its (empty) buffer; later ones find it kept.
    first, *later = counted
    assert first == STATEMENTS_BEFORE_FIRST_STEP + 1 + STATEMENTS_PER_STEP
    assert later == [STATEMENTS_BEFORE_FIRST_STEP + STATEMENTS_PER_STEP] * 5


async def test_a_buffer_not_kept_in_this_process_is_read_once(world: World) -> None:
    world.fake.script(*[Reply(text=f"Answer {n}.") for n in range(3)])
    await turn(world, "Message 0")
    elsewhere = MessageService(world.database, fake_registry(world.fake))
    try:
        with counting(world.database) as counts:
            await turn(replace(world, service=elsewhere), "Message 1")
        assert len(counts.statements) == STATEMENTS_BEFORE_FIRST_STEP + 1 + STATEMENTS_PER_STEP
        with counting(world.database) as counts:
            await turn(replace(world, service=elsewhere), "Message 2")
        assert len(counts.statements) == STATEMENTS_BEFORE_FIRST_STEP + STATEMENTS_PER_STEP
    finally:
        await elsewhere.providers.close()  # type: ignore[attr-defined]


async def test_a_kept_buffer_takes_in_what_another_process_added(world: World) -> None:
    """Two services on one database, as two server processes: each sees the other's turns."""
    world.fake.script(*[Reply(text=f"Answer {n}.") for n in range(4)])
    other = MessageService(world.database, fake_registry(world.fake))
    try:
        await turn(world, "First, here")
        await turn(replace(world, service=other), "Second, elsewhere")
        await turn(world, "Third, here again")
        await turn(replace(world, service=other), "Fourth, elsewhere again")
    finally:
        await other.providers.close()  # type: ignore[attr-defined]

    sent = [
        [(m["role"], m.get("content")) for m in r.body["messages"][1:]]
        for r in world.fake.requests
        if r.body is not None
    ]
    assert sent[2] == [
        ("user", "First, here"),
        ("assistant", "Answer 0."),
        ("user", "Second, elsewhere"),
        ("assistant", "Answer 1."),
        ("user", "Third, here again"),
    ]
    assert sent[3] == [*sent[2], ("assistant", "Answer 2."), ("user", "Fourth, elsewhere again")]
