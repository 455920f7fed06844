"""Fixtures of the integration layer: a real store on a real SQLite file, its writer running;
a PostgreSQL of the test module's own, and the fleet database on it emptied for each test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from agent.store import EventStore
from agent.testing.postgres import Postgres
from fleet.database import FleetDatabase


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    store = await EventStore.open(tmp_path / "events.sqlite", "gw-1", commit_interval_s=0.05)
    writer = asyncio.create_task(store.writer())
    yield store
    writer.cancel()
    await store.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Postgres]:
    with Postgres() as pg:
        yield pg


@pytest.fixture
def db(server: Postgres) -> Iterator[FleetDatabase]:
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute("DROP SCHEMA public CASCADE")
        admin.execute("CREATE SCHEMA public")
    database = FleetDatabase.connect(server.dsn)
    yield database
    database.close()
