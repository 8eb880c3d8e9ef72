"""Fixtures for the API tests: a real server over each engine, clients for two organizations."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engram.config.settings import Settings
from engram.store.database import Database
from support.api import ApiHarness, running_api


@pytest.fixture
async def api(settings: Settings, database: Database) -> AsyncIterator[ApiHarness]:
    async with running_api(settings, database) as harness:
        yield harness
