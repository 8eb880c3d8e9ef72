"""The event loop a process runs on: uvloop where it is installed, asyncio's own otherwise.

The server is one asyncio program either way; uvloop (libuv underneath) only
makes each turn of the loop cheaper, and turning the loop is a large part of
what a call costs a Python server.  Measured on the 2-core machine kind: a bare
grpc.aio echo costs about 15% less server CPU per call, and six alternating
``scripts/bench-turns`` runs (PostgreSQL, one-step turns, 100 in flight) gave
141 steps/s against 127, with 6.9 ms of server CPU per step against 7.6.
``ENGRAM_EVENT_LOOP=asyncio`` keeps the standard loop (to rule the loop out
while debugging, say).  The test suite runs on the same choice as the server.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from engram.config.database_choice import ConfigurationError
from engram.config.settings import EventLoopChoice

EventLoopName = Literal["uvloop", "asyncio"]

T = TypeVar("T")


def resolve_event_loop(choice: EventLoopChoice) -> EventLoopName:
    """The loop ``choice`` means on this machine; "uvloop" is refused when it cannot load."""
    if choice == "asyncio":
        return "asyncio"
    try:
        importlib.import_module("uvloop")  # installed and loadable (a broken build is not)
    except ImportError as error:
        if choice == "auto":
            return "asyncio"
        raise ConfigurationError(
            f"ENGRAM_EVENT_LOOP=uvloop, but uvloop cannot be loaded here ({error}); "
            "install it, or set ENGRAM_EVENT_LOOP=auto or asyncio"
        ) from error
    return "uvloop"


def loop_factory(name: EventLoopName) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new loop of that name (for ``asyncio.Runner`` and test harnesses)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_on_loop(name: EventLoopName, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new loop of that name, like ``asyncio.run``."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)
