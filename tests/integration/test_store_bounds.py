"""The store under pressure, on real SQLite files: bounded bytes and age, a really full disk."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.events import DEVICE_HEALTH, SAMPLES, STORE_HEALTH, WINDOW, Event, decode
from agent.store import EventStore, read_stats
from agent.uplink.read_ahead import ReadAhead


def window(i: int, device: str = "m1") -> Event:
    stats = {"n": 10, "bad": 0, "unit": "W", "min": float(i), "max": float(i + 9),
             "mean": i + 4.5, "std": 2.87, "last": float(i + 9)}
    data = {"start_ns": i * 10, "end_ns": i * 10 + 10, "tags": {f"t{k}": stats for k in range(5)}}
    return Event(WINDOW, device, i * 10 + 10, data)


async def all_events(store: EventStore) -> list:  # type: ignore[type-arg]
    rows = await store.read_after(0, 1_000_000)
    for row in rows:
        store.release(row.seq)
    return [decode(r.payload) for r in rows]


async def test_windows_are_compacted_before_anything_is_dropped(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "e.sqlite", "gw", max_bytes=40_000,
                                  report_interval_s=0)
    store.put([Event("anomaly", "m1", 1, {"score": 9.0})])
    store.put([Event(DEVICE_HEALTH, "m1", 2, {"status": "down"})])
    store.put([window(i, device=f"m{i % 2}") for i in range(200)])
    await store.flush()
    stats = await store.stats()
    assert stats.bytes <= 40_000
    assert stats.compacted > 0
    assert stats.dropped == {}, "compaction alone made room: nothing may be dropped"
    events = await all_events(store)
    kinds = Counter(e.kind for e in events)
    assert kinds["anomaly"] == 1 and kinds[DEVICE_HEALTH] == 1
    merged = [e for e in events if e.kind == WINDOW and e.data.get("windows", 1) > 1]
    assert merged and all(e.device == merged[0].device or True for e in merged)
    # Every original window is accounted for: merged counts plus untouched ones.
    assert sum(e.data.get("windows", 1) for e in events if e.kind == WINDOW) == 200
    # Samples are conserved: 10 per original window and tag.
    assert sum(e.data["tags"]["t0"]["n"] for e in events if e.kind == WINDOW) == 2000
    await store.flush()  # the degradation is reported in a store_health event
    report = [e for e in await all_events(store) if e.kind == STORE_HEALTH]
    assert report and report[-1].data["compacted"] == stats.compacted
    await store.close()


async def test_when_compaction_is_not_enough_aggregates_go_before_alarms(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "e.sqlite", "gw", max_bytes=1_000,
                                  report_interval_s=0)
    store.put([Event("anomaly", "m1", i, {"score": float(i)}) for i in range(5)])
    store.put([window(i) for i in range(100)])
    store.put([Event(DEVICE_HEALTH, "m1", 5, {"status": "up"})])
    await store.flush()
    stats = await store.stats()
    assert stats.bytes <= 1_000
    assert stats.dropped.get(WINDOW, 0) > 0
    assert "anomaly" not in stats.dropped
    kinds = Counter(e.kind for e in await all_events(store))
    assert kinds["anomaly"] == 5, "anomalies go last"
    await store.close()


async def test_events_older_than_the_age_bound_are_dropped_and_counted(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "e.sqlite", "gw", max_age_s=3600)
    now = time.time_ns()
    store.put([Event(WINDOW, "m1", now - 7200 * 10**9, {"tags": {}, "start_ns": 0, "end_ns": 0})])
    store.put([Event(WINDOW, "m1", now, {"tags": {}, "start_ns": 0, "end_ns": 0})])
    await store.flush()
    stats = await store.stats()
    assert stats.depth == 1 and stats.dropped == {WINDOW: 1}
    await store.close()
    assert read_stats(tmp_path / "e.sqlite").dropped == {WINDOW: 1}, "counts survive a restart"


async def test_rows_being_sent_are_never_compacted_or_dropped(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "e.sqlite", "gw", max_bytes=10**9)
    store.put([window(i) for i in range(20)])
    await store.flush()
    reserved = await store.read_after(0, 20)  # as the uplink does before publishing
    payloads = {r.seq: r.payload for r in reserved}
    store._max_bytes = 1  # squeeze: everything not reserved may go
    store.put([window(100)])
    await store.flush()
    left = {r.seq: r.payload for r in await store.read_after(0, 100)}
    assert all(left[seq] == payload for seq, payload in payloads.items())
    await store.close()


async def test_while_the_oldest_windows_are_sent_the_next_oldest_merge(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "e.sqlite", "gw", max_bytes=10**9)
    store.put([window(i) for i in range(400)])
    await store.flush()
    in_flight = await store.read_after(0, 300)  # a replay's window: the oldest 300
    assert all(e.kind == WINDOW for e in (decode(r.payload) for r in in_flight))
    store._max_bytes = (await store.stats()).bytes - 5_000  # some must go
    store.put([window(400)])
    await store.flush()
    stats = await store.stats()
    assert stats.compacted > 0 and stats.dropped == {}, "merged, not dropped"
    events = [decode(r.payload) for r in await store.read_after(300, 1000)]
    merged = [e for e in events if e.data.get("windows", 1) > 1]
    assert merged and all(e.seq > 300 for e in merged), "only windows not being sent"
    for row in in_flight:
        store.release(row.seq)
    await store.close()


async def test_a_store_written_by_the_first_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite"
    old = EventStore  # write rows with the version-1 layout by hand
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, time_ns INTEGER NOT NULL, kind TEXT NOT NULL,"
        " device TEXT NOT NULL, payload BLOB NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    )
    from agent.events import encode

    payload = encode(Event("anomaly", "m1", 1, {}), gateway="gw", seq=7)
    db.execute("INSERT INTO outbox VALUES (7, 1, 'anomaly', 'm1', ?)", (payload,))
    db.execute("INSERT INTO meta VALUES ('last_seq', 7)")
    db.commit()
    db.close()
    store = await old.open(path, "gw")
    stats = await store.stats()
    assert (stats.depth, stats.bytes, stats.last_seq) == (1, len(payload), 7)
    store.put([window(1)])
    await store.flush()
    assert [r.seq for r in await store.read_after(0, 10)] == [7, 8]
    await store.close()


def fill_disk(path: Path) -> None:
    """Another program takes every last byte of the disk."""
    with open(path, "wb") as hog, contextlib.suppress(OSError):
        while True:
            hog.write(b"x" * 65536)
            hog.flush()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB file system (tmpfs): the agent's state directory on a full SD card."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); "
                    "the byte bound tests cover degradation")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_degrades_and_keeps_accepting_events(tiny_disk: Path) -> None:
    store = await EventStore.open(tiny_disk / "e.sqlite", "gw", report_interval_s=0)
    accepted = 0
    disk_was_full = False
    for batch in range(400):
        store.put([window(batch * 20 + i) for i in range(20)])
        store.put([Event("anomaly", "m1", batch, {"batch": batch})])
        accepted += 21
        await store.flush()
        if store.pending_count:
            disk_was_full = True
            await store.flush()  # the retry after making room
    assert disk_was_full, "the test must really fill the disk"
    stats = await store.stats()
    assert store.pending_count <= 21
    assert stats.compacted > 0
    # Degradation keeps the disk in use: at least a quarter of it still holds events.
    assert stats.bytes >= (4 << 20) // 4, stats
    events = await all_events(store)
    assert max(e.data["batch"] for e in events if e.kind == "anomaly") == 399, \
        "the newest alarm made it to disk"
    await store.close()
    with contextlib.closing(sqlite3.connect(tiny_disk / "e.sqlite")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    os.sync()


async def test_a_disk_filled_by_someone_else_is_survived_with_the_reserve(tiny_disk: Path) -> None:
    store = await EventStore.open(tiny_disk / "e.sqlite", "gw", report_interval_s=0)
    store.put([window(i) for i in range(400)])
    await store.flush()
    assert (tiny_disk / "e.sqlite.reserve").exists()
    fill_disk(tiny_disk / "hog")
    assert os.statvfs(tiny_disk).f_bavail == 0
    refused = 0
    for i in range(5):
        store.put([window(1000 + j) for j in range(300)])  # a burst the WAL must grow for
        store.put([Event("anomaly", "m1", i, {"alarm": i})])
        await store.flush()
        if store.pending_count:
            refused += 1
            await store.flush()
    assert refused, "the disk must really have refused a write"
    assert store.pending_count == 0, "the alarms reached the disk after the store made room"
    alarms = [e.data["alarm"] for e in await all_events(store) if e.kind == "anomaly"]
    assert alarms == [0, 1, 2, 3, 4]
    assert not (tiny_disk / "e.sqlite.reserve").exists(), "the reserve was given back"
    await store.close()


async def test_events_beyond_the_memory_bound_drop_lowest_priority_and_are_counted(
    tmp_path: Path,
) -> None:
    store = await EventStore.open(tmp_path / "e.sqlite", "gw", max_pending_events=5)
    store.put([Event("anomaly", "m1", 0, {"alarm": True})])
    store.put([window(i) for i in range(7)])  # the disk has not taken anything yet
    assert store.pending_count == 5
    await store.flush()
    events = await all_events(store)
    kinds = Counter(e.kind for e in events)
    assert kinds == {"anomaly": 1, WINDOW: 4, STORE_HEALTH: 1}, "aggregates go first"
    [report] = [e for e in events if e.kind == STORE_HEALTH]
    assert report.data["dropped"] == {WINDOW: 3}, "and the loss is reported"
    await store.close()
    assert read_stats(tmp_path / "e.sqlite").dropped == {WINDOW: 3}, "counted, across restarts"


def named_seqs(reports: list[Any]) -> dict[int, str]:
    """seq -> why, from the `dropped_seqs` and `merged_seqs` of `store_health` events."""
    named: dict[int, str] = {}
    for report in reports:
        for kind, spans in report.data.get("dropped_seqs", {}).items():
            for first, last in spans:
                named.update(dict.fromkeys(range(first, last + 1), kind))
        for first, last in report.data.get("merged_seqs", []):
            named.update(dict.fromkeys(range(first, last + 1), "merged"))
    return named


async def test_every_seq_given_up_is_named_by_a_store_health_event(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite"
    store = await EventStore.open(path, "gw", max_bytes=12_000, report_interval_s=0)
    for r in range(40):  # 55 KB: raw samples must go, and windows be merged
        store.put([window(r, device=f"m{r % 2}"),
                   Event(SAMPLES, "m0", r, {"v": [r + 0.5] * 100})])
        await store.flush()
    await store.flush()  # the last drops named ...
    await store.flush()  # ... and, that report on disk, no longer kept
    events = await all_events(store)
    reports = [e for e in events if e.kind == STORE_HEALTH]
    named = named_seqs(reports)
    stored = {e.seq for e in events}
    assert not stored & named.keys(), "nothing stored is named as given up"
    assert stored | named.keys() == set(range(1, store.last_seq + 1)), \
        "every seq handed out is stored or named"
    stats = await store.stats()
    assert Counter(named.values()) == {SAMPLES: stats.dropped[SAMPLES], "merged": stats.compacted}
    assert {r.data["store"] for r in reports} == {stats.store_id} and len(stats.store_id) == 16
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM gone").fetchone()[0] == 0, \
            "ranges named by a report on disk are no longer kept"
    await store.close()
    store = await EventStore.open(path, "gw")
    assert (await store.stats()).store_id == stats.store_id, "the identity survives a restart"
    await store.close()


async def test_events_dropped_in_memory_are_named_too(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "e.sqlite", "gw", max_pending_events=5,
                                  report_interval_s=0)
    store.put([Event("anomaly", "m1", 0, {"alarm": True})])
    store.put([window(i) for i in range(7)])
    await store.flush()
    await store.flush()  # the drops are saved with the first commit, named with the next
    events = await all_events(store)
    named = named_seqs([e for e in events if e.kind == STORE_HEALTH])
    assert named == {2: WINDOW, 3: WINDOW, 4: WINDOW}, "the three oldest windows"
    assert not {e.seq for e in events} & named.keys()
    await store.close()


async def test_rows_read_ahead_are_kept_while_held_and_may_go_once_given_up(
        tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "e.sqlite", "gw", max_bytes=10**9)
    store.put([window(i) for i in range(40)])
    await store.flush()
    ahead = ReadAhead(store, batch=20)
    assert [r.seq for r in await ahead.take(0, 40, 5)] == [1, 2, 3, 4, 5]
    store._max_bytes = 1  # squeeze: everything not reserved may go
    store.put([window(100)])
    await store.flush()
    assert [r.seq for r in await ahead.take(5, 40, 5)] == [6, 7, 8, 9, 10], "held: kept"
    left = {r.seq for r in await store.read_after(20, 100)}
    assert not left & set(range(21, 41)), "never read ahead: merged or dropped"
    await ahead.close()  # gives back 11-20, read ahead and never sent
    store.put([window(101)])
    await store.flush()
    left = {r.seq for r in await store.read_after(10, 100)}
    assert not left & set(range(11, 21)), "given back: they may go too"
    await store.close()
