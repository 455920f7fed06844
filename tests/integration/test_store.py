"""The event store on a real SQLite file."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from agent.events import Event, decode
from agent.store import EventStore


def ev(i: int, device: str = "m1") -> Event:
    return Event(kind="window", device=device, time_ns=i, data={"i": i})


async def test_sequence_numbers_are_gapless_and_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    store = await EventStore.open(path, "gw")
    store.put([ev(1), ev(2), ev(3)])
    await store.flush()
    rows = await store.read_after(0, 10)
    assert [r.seq for r in rows] == [1, 2, 3]
    assert [decode(r.payload).seq for r in rows] == [1, 2, 3]
    for r in rows:
        store.ack(r.seq)
    await store.close()

    store = await EventStore.open(path, "gw")
    assert await store.depth() == 0, "acknowledged events are deleted"
    store.put([ev(4)])
    await store.flush()
    [row] = await store.read_after(0, 10)
    assert row.seq == 4, "numbers are never reused, even once every row was deleted"
    await store.close()


async def test_unacknowledged_events_outlive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    store = await EventStore.open(path, "gw")
    store.put([ev(i) for i in range(5)])
    await store.close()  # close flushes what is pending
    store = await EventStore.open(path, "gw")
    rows = await store.read_after(0, 100)
    assert [decode(r.payload).data["i"] for r in rows] == [0, 1, 2, 3, 4]
    await store.close()


async def test_writer_commits_when_the_batch_is_full(tmp_path: Path) -> None:
    import asyncio

    store = await EventStore.open(tmp_path / "e.sqlite", "gw", commit_interval_s=60, commit_max_events=3)
    committed = store.commit_signal()
    writer = asyncio.create_task(store.writer())
    store.put([ev(1), ev(2), ev(3)])
    await asyncio.wait_for(committed.wait(), timeout=5)
    assert await store.depth() == 3
    writer.cancel()
    await store.close()


async def test_full_database_keeps_events_in_order_until_space_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await EventStore.open(tmp_path / "e.sqlite", "gw")
    db = store._db
    assert db is not None
    # A real SQLITE_FULL: cap the file at its current size (what a full SD card does).
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    store.put([Event("window", "m1", i, {"blob": "x" * 2000}) for i in range(50)])
    await store.flush()
    assert store.pending_count == 50, "a failed commit keeps its events"
    assert await store.depth() == 0
    db.execute("PRAGMA max_page_count = 1000000")
    store.put([Event("window", "m1", 50, {"blob": ""})])
    await store.flush()
    rows = await store.read_after(0, 100)
    assert [decode(r.payload).time_ns for r in rows] == list(range(51))
    assert [r.seq for r in rows] == list(range(1, 52))
    await store.close()


def journal_mode(path: Path) -> str:
    """The mode a new connection finds, and which journal files lie beside the store."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        mode: str = db.execute("PRAGMA journal_mode").fetchone()[0]
    beside = [suffix for suffix in ("-wal", "-journal") if Path(f"{path}{suffix}").exists()]
    return " ".join([mode, *beside])


async def test_a_store_an_older_agent_kept_in_wal_mode_changes_to_the_rollback_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """An older agent kept the store in WAL mode: the next start changes it over, events kept;
    while another process holds it open, the store runs on in WAL and says so."""
    path = tmp_path / "events.sqlite"
    store = await EventStore.open(path, "gw")
    store.put([ev(1), ev(2)])
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM outbox").fetchone()  # a read transaction held open
    store = await EventStore.open(path, "gw")
    assert "store_journal_mode_kept" in capsys.readouterr().out
    store.put([ev(3)])
    await store.flush()
    assert [r.seq for r in await store.read_after(0, 10)] == [1, 2, 3]
    await store.close()
    reader.close()
    assert journal_mode(path).startswith("wal")
    store = await EventStore.open(path, "gw")
    assert [r.seq for r in await store.read_after(0, 10)] == [1, 2, 3]
    await store.close()
    # No longer WAL (a rollback journal's mode is per connection), its journal kept in place.
    assert journal_mode(path) == "delete -journal"


async def test_a_reader_holding_the_store_defers_commits_and_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """With a rollback journal a reader (`buffer stats` on a big store) holds commits back:
    they wait, are retried, say why, and nothing is lost once it is done."""
    path = tmp_path / "events.sqlite"
    store = await EventStore.open(path, "gw")
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM outbox").fetchone()  # a read under way
    store.put([ev(i) for i in range(5)])
    await store.flush()
    assert store.pending_count == 5, "the commit waits for the reader"
    assert "store_commit_deferred" in capsys.readouterr().out
    reader.close()
    await store.flush()
    assert store.pending_count == 0
    assert [r.seq for r in await store.read_after(0, 10)] == [1, 2, 3, 4, 5]
    await store.close()
