"""The durable outgoing queue: every event is on disk before it is sent.

SQLite in WAL mode, one connection on one worker thread (the event loop never
waits on the disk). Events are committed in batches, every `commit_interval_s`
or `commit_max_events`, to spare SD cards; the store assigns each event its
gateway-wide sequence number inside the committing transaction, so a number is
never reused, across restarts included. A row is deleted only once the uplink
reports the broker's acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

from agent.events import Event, encode

log = structlog.get_logger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    device  TEXT    NOT NULL,
    payload BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class StoreError(Exception):
    """The store cannot be opened: the message says which file and why."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    kind: str
    device: str
    payload: bytes


class EventStore:
    """Open with `await EventStore.open(...)`; run `writer()` as a task; `close()` at the end."""

    def __init__(
        self, path: Path, gateway: str, commit_interval_s: float, commit_max_events: int
    ) -> None:
        self.path = path
        self._gateway = gateway
        self._interval_s = commit_interval_s
        self._max_events = commit_max_events
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._db: sqlite3.Connection | None = None
        self._last_seq = 0
        self._pending: list[Event] = []
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self.committed = asyncio.Event()
        """Set after each commit that added events; the uplink clears it before reading."""

    @classmethod
    async def open(
        cls, path: Path, gateway: str, *, commit_interval_s: float = 0.5, commit_max_events: int = 200
    ) -> EventStore:
        store = cls(path, gateway, commit_interval_s, commit_max_events)
        try:
            await store._call(store._open_db)
        except (OSError, sqlite3.Error) as exc:
            store._executor.shutdown(wait=False)
            raise StoreError(
                f"cannot open the event store {path}: {exc} "
                "(is gateway.state_dir a writable directory?)"
            ) from exc
        return store

    def _open_db(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: each batch commit is fsynced, so a power cut loses at most the batch in memory.
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        top = db.execute("SELECT max(seq) FROM outbox").fetchone()
        self._last_seq = max(row[0] if row else 0, top[0] or 0)
        self._db = db

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def put(self, events: Iterable[Event]) -> None:
        """Queue events for the next commit (never blocks)."""
        self._pending.extend(events)
        if len(self._pending) >= self._max_events:
            self._wake.set()

    def ack(self, seq: int) -> None:
        """The broker has the event: delete it with the next commit."""
        self._acked.append(seq)

    @property
    def pending_count(self) -> int:
        """Events accepted but not yet on disk."""
        return len(self._pending)

    async def writer(self) -> None:
        """Commit batches until cancelled. A failed commit keeps its batch and is retried."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Commit what is pending now."""
        if not self._pending and not self._acked:
            return
        events, self._pending = self._pending, []
        acked, self._acked = self._acked, []
        try:
            await self._call(lambda: self._commit(events, acked))
        except sqlite3.Error as exc:
            # Put them back in front: order is kept and nothing is lost while the disk recovers.
            self._pending[:0] = events
            self._acked[:0] = acked
            log.error("store_commit_failed", path=str(self.path), error=str(exc), events=len(events))
            return
        if events:
            self.committed.set()

    def _commit(self, events: list[Event], acked: list[int]) -> None:
        db = self._require_db()
        seq = self._last_seq
        rows = []
        for event in events:
            seq += 1
            rows.append((seq, event.time_ns, event.kind, event.device,
                         encode(event, gateway=self._gateway, seq=seq)))
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO outbox (seq, time_ns, kind, device, payload) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in acked])
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('last_seq', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (seq,),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._last_seq = seq

    async def read_after(self, seq: int, limit: int) -> list[StoredEvent]:
        """Stored events with a sequence number above `seq`, oldest first."""

        def query() -> list[StoredEvent]:
            cursor = self._require_db().execute(
                "SELECT seq, kind, device, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            return [StoredEvent(r[0], r[1], r[2], bytes(r[3])) for r in cursor]

        return await self._call(query)

    async def depth(self) -> int:
        """Events on disk not yet acknowledged by the broker."""

        def query() -> int:
            count: int = self._require_db().execute("SELECT count(*) FROM outbox").fetchone()[0]
            return count

        return await self._call(query)

    async def close(self) -> None:
        await self.flush()

        def close_db() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._call(close_db)
        self._executor.shutdown(wait=True)

    def _require_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"event store {self.path} is not open")
        return self._db
