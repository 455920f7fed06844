"""The durable outgoing queue: every event is on disk before it is sent.

SQLite in WAL mode, one connection on one worker thread (the event loop never
waits on the disk). Events are committed in batches, every `commit_interval_s`
or `commit_max_events`, to spare SD cards; the store assigns each event its
gateway-wide sequence number inside the committing transaction, so a number is
never reused, across restarts included. A row is deleted only once the uplink
reports the broker's acknowledgement. Bounded in bytes and age (`degrade`),
never filling the disk (`disk`); rows the uplink has read for sending are
reserved and never touched; events made before the clock was synchronized are
corrected when they are read for sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self, TypedDict, TypeVar, Unpack

import structlog

from agent.clock import BOOT_ID, ClockWatch
from agent.events import GATEWAY_DEVICE, STORE_HEALTH, Event, correct_clock, encode, priority_of
from agent.store.degrade import Ledger, degrade_step, enforce_bounds
from agent.store.disk import LOW_BYTES, RESERVE_BYTES, DiskSpace
from agent.store.inspect import read_stats_from
from agent.store.records import StoredEvent, StoreError, StoreStats
from agent.store.schema import dropped_counts, migrate, read_meta, set_meta

log = structlog.get_logger(__name__)

T = TypeVar("T")

_DISK_FULL_SHRINK = 0.8
"""On SQLITE_FULL, shrink the stored bytes to this share to make room inside the file."""
_CHUNK_BYTES = 64 * 1024
"""Payload bytes of one write transaction at most: what one commit adds to the WAL stays
well inside the disk headroom, however long the disk refused and however much is pending."""
_AUTOCHECKPOINT_PAGES = 32
"""WAL frames after which a commit checkpoints: the WAL (kept at LOW_BYTES, about 63 frames)
is then written again from its start before it has to grow."""
_ROOM_SCAN_ROWS = 64
"""Windows one merge pass of `_make_room` looks at: its transaction must fit a small WAL."""
_DELETE_CHUNK = 512
"""Acknowledged rows deleted in one transaction at most (after an outage: a bounded WAL)."""
_BUSY_TIMEOUT_MS = 1000
"""How long a checkpoint that must empty the WAL waits for a reader (`buffer stats`) to leave."""
_FAILURE_LOG_INTERVAL_S = 30.0
"""A commit that keeps failing is logged once, then at most this often."""
_STOP_RETRIES = 3
"""At a stop, how often a refused commit is retried (after making room) before what is
still pending is counted as dropped."""


_Row = tuple[int, int, str, str, int, int, int | None, str | None, bytes]
"""An outbox row: seq, time_ns, kind, device, priority, size, mono_ns, boot, payload."""


def _always() -> bool:
    return True


class StoreOptions(TypedDict, total=False):
    """How an EventStore commits and bounds itself; the defaults are in brackets."""

    commit_interval_s: float  # (0.5) a batch is committed at least this often
    commit_max_events: int  # (200) ... or once this many events wait
    max_bytes: int | None  # (None) stored bytes over which old events are merged, then dropped
    max_age_s: float | None  # (None) events older than this are dropped
    max_pending_events: int  # (10,000) events held in memory while commits fail
    report_interval_s: float  # (60) at most one store_health event this often
    reserve_bytes: int  # (RESERVE_BYTES) disk space held back for the store's own needs
    clock_synchronized: Callable[[], bool]  # (always) whether events' times are trusted


class EventStore:
    """`async with await EventStore.open(...) as store`; run `writer()` as a task.

    Leaving the context (or `close()`) commits what is pending and closes the database.
    """

    def __init__(self, path: Path, gateway: str, **options: Unpack[StoreOptions]) -> None:
        """Use `open`: it also opens the database. Defaults of `options`: StoreOptions."""
        self.path = path
        self._gateway = gateway
        self._interval_s = options.get("commit_interval_s", 0.5)
        self._max_events = options.get("commit_max_events", 200)
        self._max_bytes = options.get("max_bytes")
        max_age_s = options.get("max_age_s")
        self._max_age_ns = int(max_age_s * 1e9) if max_age_s else None
        self._max_pending = options.get("max_pending_events", 10_000)
        self._report_interval_s = options.get("report_interval_s", 60.0)
        self._clock_synchronized = options.get("clock_synchronized", _always)
        reserve_bytes = options.get("reserve_bytes", RESERVE_BYTES)
        self._disk = DiskSpace(path, reserve_bytes)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._db: sqlite3.Connection | None = None
        self._last_seq = 0
        self._ledger = Ledger()
        self._reported_losses = 0
        self._last_report_mono = -float("inf")
        self._failures = 0
        self._unwritten_bytes = 0
        self._memory_drops: Counter[str] = Counter()
        """Events dropped on this side (memory bound, stop), not yet in the worker's ledger."""
        self._failure_logged_mono = -float("inf")
        self._pending: list[Event] = []
        self._acked: list[int] = []
        self._reserved: set[int] = set()
        self._reserved_lock = threading.Lock()
        self._wake = asyncio.Event()
        self._commit_signals: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()

    @classmethod
    async def open(cls, path: Path, gateway: str, **options: Unpack[StoreOptions]) -> EventStore:
        """The store at `path`, its database open (StoreError when it cannot be)."""
        store = cls(path, gateway, **options)
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
        # A small WAL, checkpointed often, so that it never holds much of the disk; but never
        # truncated below LOW_BYTES: that space stays the store's own, so that on a disk another
        # program filled to the last byte it can still delete, degrade and checkpoint.
        db.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
        db.execute(f"PRAGMA journal_size_limit={LOW_BYTES}")
        db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        # Debian builds SQLite with secure_delete on: every freed page is zeroed, which writes
        # each delete twice and makes a delete on a full disk need as much WAL as an insert.
        # The rows hold only what is sent to the broker anyway.
        db.execute("PRAGMA secure_delete=OFF")
        migrate(db)
        meta = read_meta(db)
        top = db.execute("SELECT max(seq), coalesce(sum(size), 0) FROM outbox").fetchone()
        self._last_seq = max(meta.get("last_seq", 0), top[0] or 0)
        self._ledger = Ledger(bytes=int(top[1]), compacted=meta.get("compacted", 0))
        self._ledger.dropped.update(dropped_counts(meta))
        self._reported_losses = self._ledger.losses()
        self._db = db
        self._disk.hold_reserve()
        self._disk.limit_pages(db)

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        """One write transaction; on failure the ledger is restored with it."""
        before = self._ledger.copy()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back by itself (it does on SQLITE_FULL).
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._ledger = before
            raise

    def _commit(
        self, events: list[Event], acked: list[int], drops: Counter[str]
    ) -> tuple[int, int, sqlite3.Error | None]:
        """Delete `acked`, then insert `events`, in transactions of bounded size. How many
        of each are done, and the error that stopped the rest (None: all done); the payload
        bytes not written are left in `_unwritten_bytes`. `drops` (made on the event loop's
        side) join the ledger first, saved with the next transaction that succeeds."""
        db = self._require_db()
        self._ledger.count_dropped(drops)
        if self._disk.hold_reserve():
            log.info("store_reserve_reclaimed", path=str(self._disk.reserve_path))
        deleted = inserted = 0
        rows: list[_Row] = []
        try:
            while deleted < len(acked):
                seqs = acked[deleted:deleted + _DELETE_CHUNK]
                with self._transaction(db):
                    self._ledger.bytes -= self._delete(db, seqs)
                deleted += len(seqs)
                with self._reserved_lock:
                    self._reserved.difference_update(seqs)
                self._checkpoint_if_low(db)
            seq = self._last_seq
            for event in events:
                seq += 1
                payload = encode(event, gateway=self._gateway, seq=seq, boot=BOOT_ID)
                boot = BOOT_ID if event.mono_ns is not None else None
                rows.append((seq, event.time_ns, event.kind, event.device,
                             priority_of(event.kind), len(payload), event.mono_ns, boot, payload))
            for chunk in _chunks_by_size(rows):
                with self._transaction(db):
                    db.executemany(
                        "INSERT INTO outbox (seq, time_ns, kind, device, priority, size, mono_ns,"
                        " boot, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        chunk,
                    )
                    self._ledger.bytes += sum(r[5] for r in chunk)
                    set_meta(db, "last_seq", chunk[-1][0])
                    self._ledger.save_unsaved(db)
                    self._enforce(db, self._max_bytes)
                self._last_seq = chunk[-1][0]
                inserted += len(chunk)
                self._checkpoint_if_low(db)
            if not inserted and self._ledger.unsaved:
                with self._transaction(db):
                    self._ledger.save_unsaved(db)
        except sqlite3.Error as exc:
            self._unwritten_bytes = sum(r[5] for r in rows[inserted:]) if events else 0
            return inserted, deleted, exc
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._disk.limit_pages(db)
        return inserted, deleted, None

    def _delete(self, db: sqlite3.Connection, seqs: list[int]) -> int:
        """Delete acknowledged rows; the bytes freed."""
        freed = 0
        for seq in seqs:
            row = db.execute("DELETE FROM outbox WHERE seq = ? RETURNING size", (seq,)).fetchone()
            if row is not None:
                freed += row[0]
        return freed

    def _enforce(self, db: sqlite3.Connection, max_bytes: int | None) -> None:
        with self._reserved_lock:
            protected = set(self._reserved)
        enforce_bounds(db, self._ledger, max_bytes=max_bytes, max_age_ns=self._max_age_ns,
                       protected=protected)

    def _make_room(self) -> None:
        """After SQLITE_FULL: if the disk itself is full give back the reserve and checkpoint
        the WAL (waiting for readers) so that it is written again from its start; then shrink the data, in transactions of
        bounded size (a big delete needs a big WAL). Freed pages take the next inserts."""
        db = self._require_db()
        if self._disk.low():
            self._release_reserve()
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(RESTART)")
        # Room for what waits to be written, and some (the file may not grow); never more than
        # half of what is stored at once, so that a burst cannot push out every stored alarm.
        stored = self._ledger.bytes
        target = int(max(min(stored * _DISK_FULL_SHRINK, stored - 1.5 * self._unwritten_bytes),
                          stored / 2))
        with self._reserved_lock:
            protected = set(self._reserved)
        while self._ledger.bytes > target:
            before = self._ledger.bytes
            try:
                with self._transaction(db):
                    degrade_step(db, self._ledger, protected, scan_rows=_ROOM_SCAN_ROWS)
                    self._ledger.save_unsaved(db)
            except sqlite3.Error:
                if not self._release_reserve():
                    raise
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA wal_checkpoint(RESTART)")
                continue
            self._checkpoint_if_low(db)
            if self._ledger.bytes >= before:
                break  # only rows being sent are left
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(RESTART)")
        self._disk.limit_pages(db)
        log.warning("store_disk_full_degraded", path=str(self.path), bytes=self._ledger.bytes,
                    compacted=self._ledger.compacted, dropped=dict(self._ledger.dropped))

    def _checkpoint_if_low(self, db: sqlite3.Connection) -> None:
        """On a full disk the WAL may not grow: empty it (waiting for readers) after each
        transaction, so that the next one is written over it from its start."""
        if self._disk.low():
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(RESTART)")

    def _release_reserve(self) -> bool:
        released = self._disk.release_reserve()
        if released:
            log.warning("store_reserve_released", path=str(self._disk.reserve_path),
                        free_bytes=self._disk.free_bytes())
        return released

    def _save_losses(self, drops: Counter[str]) -> None:
        """Save the loss counters alone (a transaction of one or two pages), the reserve
        given back first if the disk is full: at a stop, losses are never left uncounted."""
        db = self._require_db()
        self._ledger.count_dropped(drops)
        if self._disk.low():
            self._disk.release_reserve()
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(RESTART)")
        with self._transaction(db):
            self._ledger.save_unsaved(db)

    def _correct_clock(self, db: sqlite3.Connection, seq: int, payload: bytes, mono_ns: int) -> bytes:
        """Fix the time of an event made before the clock was synchronized, once and for good:
        stored corrected, so that a resend after a crash is the same bytes."""
        corrected = correct_clock(payload, ClockWatch.corrected(mono_ns))
        with self._transaction(db):
            db.execute("UPDATE outbox SET payload = ?, size = ?, mono_ns = NULL WHERE seq = ?",
                       (corrected, len(corrected), seq))
            self._ledger.bytes += len(corrected) - len(payload)
        return corrected

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
        self._memory_drops.update(self._pending[i].kind for i in victims)
        self._pending = [e for i, e in enumerate(self._pending) if i not in victims]
        log.error("store_pending_dropped", events=count, path=str(self.path),
                  reason="the disk refused writes for too long")

    def ack(self, seq: int) -> None:
        """The broker has the event: delete it with the next commit (reserved until then,
        so that no degradation counts it as dropped)."""
        self._acked.append(seq)

    def release(self, seq: int) -> None:
        """The event was not sent after all: it may be compacted or dropped again."""
        with self._reserved_lock:
            self._reserved.discard(seq)

    @property
    def pending_count(self) -> int:
        """Events accepted but not yet on disk."""
        return len(self._pending)

    def commit_signal(self) -> asyncio.Event:
        """An event of the caller's own, set after each commit that added events: a reader
        clears it before it reads `last_seq`, then waits on it for more."""
        signal = asyncio.Event()
        self._commit_signals.add(signal)
        return signal

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
        if not self._pending and not self._acked and not self._memory_drops:
            return
        events, self._pending = self._pending, []
        acked, self._acked = self._acked, []
        drops, self._memory_drops = self._memory_drops, Counter()
        job = asyncio.ensure_future(self._call(lambda: self._commit(events, acked, drops)))
        try:
            inserted, deleted, error = await asyncio.shield(job)
        except asyncio.CancelledError:
            # The commit runs on in its thread: what it did not do must not be forgotten.
            inserted, deleted, _ = await job
            self._pending[:0] = events[inserted:]
            self._acked[:0] = acked[deleted:]
            raise
        # What was not done goes back in front: order is kept, nothing is lost meanwhile.
        self._pending[:0] = events[inserted:]
        self._acked[:0] = acked[deleted:]
        if inserted:
            for signal in self._commit_signals:
                signal.set()
        if error is None:
            if self._failures:
                log.info("store_commit_recovered", path=str(self.path), failures=self._failures)
                self._failures = 0
            return
        full = isinstance(error, sqlite3.OperationalError) and "full" in str(error)
        self._failures += 1
        now = time.monotonic()
        if now - self._failure_logged_mono >= _FAILURE_LOG_INTERVAL_S:
            self._failure_logged_mono = now
            log.error("store_commit_failed", path=str(self.path), error=str(error),
                      events=len(self._pending), disk_full=full, failures=self._failures,
                      free_bytes=self._disk.free_bytes())
        if full:
            try:
                await self._call(self._make_room)
            except sqlite3.Error as room_exc:
                log.error("store_cannot_make_room", path=str(self.path), error=str(room_exc),
                          hint="the disk is full: free space on it (gateway.state_dir)")

    def _report_losses(self) -> None:
        losses = self._ledger.losses() + self._memory_drops.total()
        now = time.monotonic()
        if losses == self._reported_losses or now - self._last_report_mono < self._report_interval_s:
            return
        self._reported_losses, self._last_report_mono = losses, now
        data = {
            "dropped": dict(self._ledger.dropped + self._memory_drops),
            "compacted": self._ledger.compacted,
            "bytes": self._ledger.bytes,
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

    async def depth(self) -> int:
        """Events on disk not yet acknowledged by the broker."""

        def query() -> int:
            count: int = self._require_db().execute("SELECT count(*) FROM outbox").fetchone()[0]
            return count

        return await self._call(query)

    async def stats(self) -> StoreStats:
        return await self._call(lambda: read_stats_from(self._require_db(), self.path))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit what is pending; what the disk still refuses is counted as dropped."""
        await self.flush()
        for _ in range(_STOP_RETRIES):
            if not self._pending and not self._acked:
                break
            await self.flush()
        lost = Counter(e.kind for e in self._pending)
        self._pending = []
        drops, self._memory_drops = self._memory_drops + lost, Counter()
        if drops:
            try:
                await self._call(lambda: self._save_losses(drops))
            except sqlite3.Error as exc:
                log.error("store_losses_not_saved", path=str(self.path), error=str(exc),
                          dropped=dict(lost))
        if lost:
            log.error("store_events_lost_at_stop", path=str(self.path), dropped=dict(lost),
                      reason="the disk refused writes")

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


def _chunks_by_size(rows: list[_Row]) -> Iterator[list[_Row]]:
    """`rows` in runs of at most _CHUNK_BYTES of payload each."""
    chunk: list[_Row] = []
    size = 0
    for row in rows:
        chunk.append(row)
        size += row[5]
        if size >= _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
