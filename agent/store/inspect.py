"""Reading a store without the agent: statistics and export, read-only.

Safe while the agent runs: a read holds the store's commits back while it reads
(a commit waits up to a second, then is retried; nothing is lost).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from agent.store.records import StoredEvent, StoreError, StoreStats
from agent.store.schema import dropped_counts, read_meta, store_id_of

_EXPORT_CHUNK = 1000
"""Rows one read of `export_events` takes: its lock on the store is held for milliseconds."""


def read_stats_from(db: sqlite3.Connection, path: Path) -> StoreStats:
    meta = read_meta(db)
    depth, size, oldest, newest, top = db.execute(
        "SELECT count(*), coalesce(sum(size), 0), min(time_ns), max(time_ns), max(seq) FROM outbox"
    ).fetchone()
    by_kind = dict(db.execute("SELECT kind, count(*) FROM outbox GROUP BY kind").fetchall())
    file_bytes = sum(p.stat().st_size for p in files_of(path) if p.exists())
    return StoreStats(
        depth=depth, bytes=size, file_bytes=file_bytes, oldest_time_ns=oldest,
        newest_time_ns=newest, last_seq=max(meta.get("last_seq", 0), top or 0),
        by_kind=by_kind, dropped=dropped_counts(meta), compacted=meta.get("compacted", 0),
        store_id=store_id_of(meta),
    )


def files_of(path: Path) -> list[Path]:
    """The database and the journal beside it (a WAL, for a store an older agent kept)."""
    return [path, Path(f"{path}-journal"), Path(f"{path}-wal")]


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """The store opened read-only; a commit a crash interrupted is a StoreError that says
    what to do (rolling it back is a write, which the agent makes at its next start)."""
    if not path.exists():
        raise StoreError(f"no event store at {path} (has the agent run with this configuration?)")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            yield db
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_READONLY_ROLLBACK":
                raise StoreError(f"cannot read the event store {path}: {exc}") from exc
            raise StoreError(
                f"the event store {path} holds a commit that a crash or power cut interrupted; "
                "the agent rolls it back when it starts: start it "
                "(sudo systemctl start edge-agent), then ask again") from exc


def read_stats(path: Path) -> StoreStats:
    with _read_only(path) as db:
        return read_stats_from(db, path)


def export_events(path: Path) -> Iterable[StoredEvent]:
    """Every stored event, oldest first, read in chunks: between two, the agent commits."""
    with _read_only(path) as db:
        after = 0
        while rows := db.execute(
            "SELECT seq, kind, device, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, _EXPORT_CHUNK),
        ).fetchall():
            for seq, kind, device, payload in rows:
                yield StoredEvent(seq, kind, device, bytes(payload))
            after = rows[-1][0]
