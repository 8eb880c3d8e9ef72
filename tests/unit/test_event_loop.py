"""ENGRAM_EVENT_LOOP: which loop a process runs on, and a clear refusal when it cannot."""

from __future__ import annotations

import asyncio
import sys

import pytest

from engram.config.database_choice import ConfigurationError
from engram.config.event_loop import resolve_event_loop, run_on_loop
from engram.config.settings import Settings


def test_auto_is_uvloop_where_installed() -> None:
    pytest.importorskip("uvloop")  # a dependency of the server, except on Windows
    assert Settings().event_loop == "auto"
    assert resolve_event_loop("auto") == "uvloop"


def test_asyncio_keeps_the_standard_loop() -> None:
    pytest.importorskip("uvloop")
    assert resolve_event_loop("asyncio") == "asyncio"

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run_on_loop("asyncio", loop_module()).startswith("asyncio")
    assert run_on_loop("uvloop", loop_module()).startswith("uvloop")


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # importing it now fails, as if missing
    assert resolve_event_loop("auto") == "asyncio"
    with pytest.raises(ConfigurationError, match="ENGRAM_EVENT_LOOP"):
        resolve_event_loop("uvloop")


def test_the_variable_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGRAM_EVENT_LOOP", "asyncio")
    assert Settings().event_loop == "asyncio"
    monkeypatch.setenv("ENGRAM_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="ENGRAM_EVENT_LOOP"):
        Settings()
