"""The durable outgoing queue: every event is on disk before it is sent.

SQLite in WAL mode, one connection on one worker thread (the event loop never
waits on the disk). Events are committed in batches, every `commit_interval_s`
or `commit_max_events`, to spare SD cards; the store assigns each event its
gateway-wide sequence number inside the committing transaction, so a number is
never reused, across restarts included. A row is deleted only once the uplink
reports the broker's acknowledgement.

Bounded in bytes and age. Over the bound the store degrades instead of
dropping blindly: the oldest window aggregates are merged pairwise into coarser
windows first; only then are the oldest events of the lowest priority dropped
(aggregates, then health, and anomaly/limit/state events last). A full disk
(SQLITE_FULL) triggers the same degradation. Rows the uplink has read for
sending are reserved and never touched. Every drop and compaction is counted
(persistently) and reported in a `store_health` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import structlog

from agent.clock import BOOT_ID, ClockWatch
from agent.compaction import merge_windows
from agent.events import (
    GATEWAY_DEVICE,
    STORE_HEALTH,
    WINDOW,
    Event,
    correct_clock,
    decode,
    encode,
    encode_envelope,
    priority_of,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq      INTEGER PRIMARY KEY,
    time_ns  INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    device   TEXT    NOT NULL,
    priority INTEGER NOT NULL DEFAULT 2,
    size     INTEGER NOT NULL DEFAULT 0,
    mono_ns  INTEGER,
    boot     TEXT,
    payload  BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (priority, seq);
CREATE INDEX IF NOT EXISTS outbox_unsynced ON outbox (seq) WHERE mono_ns IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_COMPACT_SCAN_ROWS = 256
_DROP_BATCH_ROWS = 64
_DISK_FULL_SHRINK = 0.8
"""On SQLITE_FULL, shrink the stored bytes to this share to make room inside the file."""
HEADROOM_BYTES = 1 << 19
"""Disk space the store never takes for rows: the WAL (checkpointed every 64 pages) and the
shared-memory file live in it. The database file's page limit is set from the free space
minus this, so the store's own SQLITE_FULL comes before the disk is full."""
RESERVE_BYTES = 1 << 20
"""Disk space held in `<store>.reserve` and given back on SQLITE_FULL: a checkpoint needs room
to grow the database file and a delete needs room in the WAL, so a store on a disk filled
to the last byte could otherwise neither shrink nor grow."""


class StoreError(Exception):
    """The store cannot be opened: the message says which file and why."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    kind: str
    device: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class StoreStats:
    depth: int
    bytes: int
    """Payload bytes stored (what the byte bound limits)."""
    file_bytes: int
    """Database file plus its WAL on disk."""
    oldest_time_ns: int | None
    newest_time_ns: int | None
    last_seq: int
    by_kind: dict[str, int]
    dropped: dict[str, int]
    """Events dropped since the store was created, per kind."""
    compacted: int
    """Window events merged into others since the store was created."""


@dataclass
class _Losses:
    """Counters of degradation, mirrored in the meta table."""

    dropped: Counter[str] = field(default_factory=Counter)
    compacted: int = 0

    def total(self) -> int:
        return sum(self.dropped.values()) + self.compacted


class EventStore:
    """Open with `await EventStore.open(...)`; run `writer()` as a task; `close()` at the end."""

    def __init__(
        self,
        path: Path,
        gateway: str,
        *,
        commit_interval_s: float,
        commit_max_events: int,
        max_bytes: int | None,
        max_age_s: float | None,
        max_pending_events: int,
        report_interval_s: float,
        reserve_bytes: int,
        clock_synchronized: Callable[[], bool],
    ) -> None:
        self.path = path
        self._clock_synchronized = clock_synchronized
        self._reserve_path = path.with_name(path.name + ".reserve")
        self._reserve_bytes = reserve_bytes
        self._reserve_held = False
        self._gateway = gateway
        self._interval_s = commit_interval_s
        self._max_events = commit_max_events
        self._max_bytes = max_bytes
        self._max_age_ns = int(max_age_s * 1e9) if max_age_s else None
        self._max_pending = max_pending_events
        self._report_interval_s = report_interval_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._db: sqlite3.Connection | None = None
        self._last_seq = 0
        self._bytes = 0
        self._losses = _Losses()
        self._reported_losses = 0
        self._last_report_mono = -float("inf")
        self._pending: list[Event] = []
        self._acked: list[int] = []
        self._reserved: set[int] = set()
        self._reserved_lock = threading.Lock()
        self._wake = asyncio.Event()
        self.committed = asyncio.Event()
        """Set after each commit that added events; the uplink clears it before reading."""

    @classmethod
    async def open(
        cls,
        path: Path,
        gateway: str,
        *,
        commit_interval_s: float = 0.5,
        commit_max_events: int = 200,
        max_bytes: int | None = None,
        max_age_s: float | None = None,
        max_pending_events: int = 10_000,
        report_interval_s: float = 60.0,
        reserve_bytes: int = RESERVE_BYTES,
        clock_synchronized: Callable[[], bool] = lambda: True,
    ) -> EventStore:
        store = cls(
            path, gateway, commit_interval_s=commit_interval_s,
            commit_max_events=commit_max_events, max_bytes=max_bytes, max_age_s=max_age_s,
            max_pending_events=max_pending_events, report_interval_s=report_interval_s,
            reserve_bytes=reserve_bytes, clock_synchronized=clock_synchronized,
        )
        try:
            await store._call(store._open_db)
        except (OSError, sqlite3.Error) as exc:
            store._executor.shutdown(wait=False)
            raise StoreError(
                f"cannot open the event store {path}: {exc} "
                "(is gateway.state_dir a writable directory?)"
            ) from exc
        return store

    # --- worker thread ------------------------------------------------------------------

    def _open_db(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: each batch commit is fsynced, so a power cut loses at most the batch in memory.
        db.execute("PRAGMA synchronous=FULL")
        # A small WAL, checkpointed often, so that it never holds much of the disk.
        db.execute("PRAGMA wal_autocheckpoint=64")
        db.execute("PRAGMA journal_size_limit=1048576")
        _migrate(db)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        top = db.execute("SELECT max(seq), coalesce(sum(size), 0) FROM outbox").fetchone()
        self._last_seq = max(int(meta.get("last_seq", 0)), top[0] or 0)
        self._bytes = int(top[1])
        self._losses = _Losses(
            dropped=Counter({k[len("dropped."):]: int(v) for k, v in meta.items()
                             if k.startswith("dropped.")}),
            compacted=int(meta.get("compacted", 0)),
        )
        self._reported_losses = self._losses.total()
        self._db = db
        self._hold_reserve()
        self._limit_pages(db)

    def _free_disk_bytes(self) -> int:
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    def _limit_pages(self, db: sqlite3.Connection) -> None:
        """Let the database file grow only into free space beyond the headroom."""
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        room = self._free_disk_bytes() - HEADROOM_BYTES
        db.execute(f"PRAGMA max_page_count = {max(pages + room // page_size, pages, 1)}")

    def _hold_reserve(self) -> None:
        """Claim the reserve if it is not held and the disk has room for it beyond the headroom."""
        if self._reserve_held or self._reserve_bytes <= 0:
            return
        if self._free_disk_bytes() < self._reserve_bytes + HEADROOM_BYTES:
            return
        try:
            with open(self._reserve_path, "wb") as reserve:
                reserve.write(b"\0" * self._reserve_bytes)
                reserve.flush()
                os.fsync(reserve.fileno())
        except OSError as exc:
            self._reserve_path.unlink(missing_ok=True)
            log.warning("store_reserve_unavailable", path=str(self._reserve_path), error=str(exc))
            return
        self._reserve_held = True

    def _commit(self, events: list[Event], acked: list[int]) -> None:
        db = self._require_db()
        seq = self._last_seq
        rows = []
        for event in events:
            seq += 1
            payload = encode(event, gateway=self._gateway, seq=seq, boot=BOOT_ID)
            boot = BOOT_ID if event.mono_ns is not None else None
            rows.append((seq, event.time_ns, event.kind, event.device, priority_of(event.kind),
                         len(payload), event.mono_ns, boot, payload))
        added = sum(r[5] for r in rows)
        with self._transaction(db):
            db.executemany(
                "INSERT INTO outbox (seq, time_ns, kind, device, priority, size, mono_ns, boot,"
                " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            freed = self._delete(db, acked)
            self._set_meta(db, "last_seq", seq)
            self._bytes += added - freed
            self._enforce_bounds(db, self._max_bytes)
        self._last_seq = seq
        self._hold_reserve()
        self._limit_pages(db)

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Any:
        """One write transaction; on failure the in-memory byte count is restored with it."""
        bytes_before, losses_before = self._bytes, replace(
            self._losses, dropped=Counter(self._losses.dropped))
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back by itself (it does on SQLITE_FULL).
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._bytes, self._losses = bytes_before, losses_before
            raise

    def _delete(self, db: sqlite3.Connection, seqs: list[int]) -> int:
        freed = 0
        for seq in seqs:
            row = db.execute("DELETE FROM outbox WHERE seq = ? RETURNING size", (seq,)).fetchone()
            if row is not None:
                freed += row[0]
        return freed

    def _set_meta(self, db: sqlite3.Connection, key: str, value: int) -> None:
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _protected(self) -> set[int]:
        with self._reserved_lock:
            return set(self._reserved)

    def _enforce_bounds(self, db: sqlite3.Connection, max_bytes: int | None) -> None:
        """Inside the caller's transaction: drop what is too old, then degrade to fit the bytes."""
        protected = self._protected()
        if self._max_age_ns is not None:
            cutoff = time.time_ns() - self._max_age_ns
            old = db.execute(
                "SELECT seq, kind, size FROM outbox WHERE time_ns < ? ORDER BY seq", (cutoff,)
            ).fetchall()
            self._drop(db, [r for r in old if r[0] not in protected])
        if max_bytes is None:
            return
        while self._bytes > max_bytes:
            if self._compact_oldest_windows(db, protected):
                continue
            if not self._drop_lowest_priority(db, protected):
                break  # only rows being sent are left: they leave once acknowledged

    def _compact_oldest_windows(self, db: sqlite3.Connection, protected: set[int]) -> bool:
        rows = db.execute(
            "SELECT seq, device, payload, size FROM outbox WHERE kind = ? ORDER BY seq LIMIT ?",
            (WINDOW, _COMPACT_SCAN_ROWS),
        ).fetchall()
        by_device: dict[str, list[tuple[int, bytes, int]]] = {}
        for seq, device, payload, size in rows:
            if seq not in protected:
                by_device.setdefault(device, []).append((seq, bytes(payload), size))
        merged_any = False
        for windows in by_device.values():
            for (seq_a, pay_a, size_a), (seq_b, pay_b, size_b) in zip(
                windows[0::2], windows[1::2], strict=False
            ):
                env_a, env_b = decode(pay_a), decode(pay_b)
                merged = encode_envelope(
                    replace(env_a, time_ns=env_b.time_ns, data=merge_windows(env_a.data, env_b.data))
                )
                db.execute("UPDATE outbox SET payload = ?, size = ?, time_ns = ? WHERE seq = ?",
                           (merged, len(merged), env_b.time_ns, seq_a))
                db.execute("DELETE FROM outbox WHERE seq = ?", (seq_b,))
                self._bytes += len(merged) - size_a - size_b
                self._losses.compacted += 1
                merged_any = True
        if merged_any:
            self._set_meta(db, "compacted", self._losses.compacted)
        return merged_any

    def _drop_lowest_priority(self, db: sqlite3.Connection, protected: set[int]) -> bool:
        for (priority,) in db.execute("SELECT DISTINCT priority FROM outbox ORDER BY priority"):
            rows = db.execute(
                "SELECT seq, kind, size FROM outbox WHERE priority = ? ORDER BY seq LIMIT ?",
                (priority, _DROP_BATCH_ROWS + len(protected)),
            ).fetchall()
            victims = [r for r in rows if r[0] not in protected][:_DROP_BATCH_ROWS]
            if victims:
                self._drop(db, victims)
                return True
        return False

    def _drop(self, db: sqlite3.Connection, victims: list[tuple[int, str, int]]) -> None:
        if not victims:
            return
        db.executemany("DELETE FROM outbox WHERE seq = ?", [(v[0],) for v in victims])
        kinds = Counter(v[1] for v in victims)
        self._losses.dropped.update(kinds)
        self._bytes -= sum(v[2] for v in victims)
        for kind in kinds:
            self._set_meta(db, f"dropped.{kind}", self._losses.dropped[kind])

    def _make_room(self) -> None:
        """After SQLITE_FULL: give back the reserve, fold the WAL into the file, shrink the data.

        Freed pages stay in the database file and take the next inserts; the
        reserve is claimed again once the disk has room for it.
        """
        db = self._require_db()
        if self._free_disk_bytes() < HEADROOM_BYTES:  # something else filled the disk
            self._reserve_path.unlink(missing_ok=True)
            self._reserve_held = False
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with self._transaction(db):
            self._enforce_bounds(db, int(self._bytes * _DISK_FULL_SHRINK))
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._limit_pages(db)
        log.warning("store_disk_full_degraded", path=str(self.path), bytes=self._bytes,
                    compacted=self._losses.compacted, dropped=dict(self._losses.dropped))

    # --- event loop side ------------------------------------------------------------------

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def put(self, events: Iterable[Event]) -> None:
        """Queue events for the next commit (never blocks; bounded while the disk refuses)."""
        self._pending.extend(events)
        if len(self._pending) >= self._max_events:
            self._wake.set()
        overflow = len(self._pending) - self._max_pending
        if overflow > 0:
            self._drop_pending(overflow)

    def _drop_pending(self, count: int) -> None:
        """Memory is bounded too: drop the oldest events of the lowest priority first."""
        order = sorted(range(len(self._pending)),
                       key=lambda i: (priority_of(self._pending[i].kind), i))
        victims = set(order[:count])
        self._losses.dropped.update(self._pending[i].kind for i in victims)
        self._pending = [e for i, e in enumerate(self._pending) if i not in victims]
        log.error("store_pending_dropped", events=count, path=str(self.path),
                  reason="the disk refused writes for too long")

    def ack(self, seq: int) -> None:
        """The broker has the event: delete it with the next commit."""
        with self._reserved_lock:
            self._reserved.discard(seq)
        self._acked.append(seq)

    def release(self, seq: int) -> None:
        """The event was not sent after all: it may be compacted or dropped again."""
        with self._reserved_lock:
            self._reserved.discard(seq)

    @property
    def pending_count(self) -> int:
        """Events accepted but not yet on disk."""
        return len(self._pending)

    @property
    def last_seq(self) -> int:
        """The highest sequence number committed."""
        return self._last_seq

    async def writer(self) -> None:
        """Commit batches until cancelled. A failed commit keeps its batch and is retried."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Commit what is pending now, and report degradation if there was any."""
        self._report_losses()
        if not self._pending and not self._acked:
            return
        events, self._pending = self._pending, []
        acked, self._acked = self._acked, []
        try:
            await self._call(lambda: self._commit(events, acked))
        except sqlite3.Error as exc:
            full = isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)
            log.error("store_commit_failed", path=str(self.path), error=str(exc),
                      events=len(events), disk_full=full)
            # Put them back in front: order is kept and nothing is lost while the disk recovers.
            self._pending[:0] = events
            self._acked[:0] = acked
            if full:
                try:
                    await self._call(self._make_room)
                except sqlite3.Error as room_exc:
                    log.error("store_cannot_make_room", path=str(self.path), error=str(room_exc))
            return
        if events:
            self.committed.set()

    def _report_losses(self) -> None:
        total = self._losses.total()
        now = time.monotonic()
        if total == self._reported_losses or now - self._last_report_mono < self._report_interval_s:
            return
        self._reported_losses, self._last_report_mono = total, now
        data = {
            "dropped": dict(self._losses.dropped),
            "compacted": self._losses.compacted,
            "bytes": self._bytes,
            "max_bytes": self._max_bytes,
        }
        log.warning("store_degraded", **data)
        self._pending.append(Event(STORE_HEALTH, GATEWAY_DEVICE, time.time_ns(), data))

    async def read_after(self, seq: int, limit: int, *, upto: int | None = None) -> list[StoredEvent]:
        """Stored events with `seq < number <= upto`, oldest first, reserved for sending."""

        synced = self._clock_synchronized()

        def query() -> list[StoredEvent]:
            db = self._require_db()
            cursor = db.execute(
                "SELECT seq, kind, device, payload, mono_ns, boot FROM outbox "
                "WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (seq, upto if upto is not None else 2**63 - 1, limit),
            )
            rows = []
            for number, kind, device, payload, mono_ns, boot in cursor.fetchall():
                payload = bytes(payload)
                if synced and mono_ns is not None and boot == BOOT_ID:
                    payload = self._correct_clock(db, number, payload, mono_ns)
                rows.append(StoredEvent(number, kind, device, payload))
            with self._reserved_lock:
                self._reserved.update(r.seq for r in rows)
            return rows

        return await self._call(query)

    def _correct_clock(self, db: sqlite3.Connection, seq: int, payload: bytes, mono_ns: int) -> bytes:
        """Fix the time of an event made before the clock was synchronized, once and for good:
        stored corrected, so that a resend after a crash is the same bytes."""
        corrected = correct_clock(payload, ClockWatch.corrected(mono_ns))
        with self._transaction(db):
            db.execute("UPDATE outbox SET payload = ?, size = ?, mono_ns = NULL WHERE seq = ?",
                       (corrected, len(corrected), seq))
            self._bytes += len(corrected) - len(payload)
        return corrected

    async def depth(self) -> int:
        """Events on disk not yet acknowledged by the broker."""

        def query() -> int:
            count: int = self._require_db().execute("SELECT count(*) FROM outbox").fetchone()[0]
            return count

        return await self._call(query)

    async def stats(self) -> StoreStats:
        return await self._call(lambda: read_stats_from(self._require_db(), self.path))

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


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store written by an older agent up to SCHEMA_VERSION, in place."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    columns = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
    with contextlib.closing(db.cursor()) as cur:
        cur.execute("BEGIN IMMEDIATE")
        if columns and "priority" not in columns:  # version 1: no priority, no size
            cur.execute("ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 2")
            cur.execute("ALTER TABLE outbox ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
            cur.execute("ALTER TABLE outbox ADD COLUMN mono_ns INTEGER")
            cur.execute("ALTER TABLE outbox ADD COLUMN boot TEXT")
            for kind, in cur.execute("SELECT DISTINCT kind FROM outbox").fetchall():
                cur.execute("UPDATE outbox SET priority = ? WHERE kind = ?", (priority_of(kind), kind))
            cur.execute("UPDATE outbox SET size = length(payload)")
        for statement in _SCHEMA.strip().split(";"):
            if statement.strip():
                cur.execute(statement)
        cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        cur.execute("COMMIT")


def read_stats_from(db: sqlite3.Connection, path: Path) -> StoreStats:
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    depth, size, oldest, newest, top = db.execute(
        "SELECT count(*), coalesce(sum(size), 0), min(time_ns), max(time_ns), max(seq) FROM outbox"
    ).fetchone()
    by_kind = dict(db.execute("SELECT kind, count(*) FROM outbox GROUP BY kind").fetchall())
    wal = Path(f"{path}-wal")
    file_bytes = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    return StoreStats(
        depth=depth, bytes=size, file_bytes=file_bytes, oldest_time_ns=oldest,
        newest_time_ns=newest, last_seq=max(int(meta.get("last_seq", 0)), top or 0),
        by_kind=by_kind,
        dropped={k[len("dropped."):]: int(v) for k, v in meta.items() if k.startswith("dropped.")},
        compacted=int(meta.get("compacted", 0)),
    )


def read_stats(path: Path) -> StoreStats:
    """Statistics of a store file, read-only: safe while the agent runs (WAL readers don't block)."""
    if not path.exists():
        raise StoreError(f"no event store at {path} (has the agent run with this configuration?)")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return read_stats_from(db, path)


def export_events(path: Path) -> Iterable[StoredEvent]:
    """Every stored event, oldest first, read-only."""
    if not path.exists():
        raise StoreError(f"no event store at {path} (has the agent run with this configuration?)")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        for seq, kind, device, payload in db.execute(
            "SELECT seq, kind, device, payload FROM outbox ORDER BY seq"
        ):
            yield StoredEvent(seq, kind, device, bytes(payload))
