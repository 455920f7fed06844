"""Fixtures of the integration layer: a real store on a real SQLite file, its writer running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.store import EventStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    store = await EventStore.open(tmp_path / "events.sqlite", "gw-1", commit_interval_s=0.05)
    writer = asyncio.create_task(store.writer())
    yield store
    writer.cancel()
    await store.close()
