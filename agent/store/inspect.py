"""Reading a store without the agent: statistics and export, read-only.

Safe while the agent runs: SQLite's WAL lets readers in beside the writer.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from agent.store.records import StoredEvent, StoreError, StoreStats
from agent.store.schema import dropped_counts, read_meta, store_id_of


def read_stats_from(db: sqlite3.Connection, path: Path) -> StoreStats:
    meta = read_meta(db)
    depth, size, oldest, newest, top = db.execute(
        "SELECT count(*), coalesce(sum(size), 0), min(time_ns), max(time_ns), max(seq) FROM outbox"
    ).fetchone()
    by_kind = dict(db.execute("SELECT kind, count(*) FROM outbox GROUP BY kind").fetchall())
    wal = Path(f"{path}-wal")
    file_bytes = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    return StoreStats(
        depth=depth, bytes=size, file_bytes=file_bytes, oldest_time_ns=oldest,
        newest_time_ns=newest, last_seq=max(meta.get("last_seq", 0), top or 0),
        by_kind=by_kind, dropped=dropped_counts(meta), compacted=meta.get("compacted", 0),
        store_id=store_id_of(meta),
    )


def _open_read_only(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise StoreError(f"no event store at {path} (has the agent run with this configuration?)")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def read_stats(path: Path) -> StoreStats:
    with contextlib.closing(_open_read_only(path)) as db:
        return read_stats_from(db, path)


def export_events(path: Path) -> Iterable[StoredEvent]:
    """Every stored event, oldest first."""
    with contextlib.closing(_open_read_only(path)) as db:
        for seq, kind, device, payload in db.execute(
            "SELECT seq, kind, device, payload FROM outbox ORDER BY seq"
        ):
            yield StoredEvent(seq, kind, device, bytes(payload))
