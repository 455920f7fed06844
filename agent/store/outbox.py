"""The store's SQLite side: the `outbox` table, on the store's one worker thread only.

A rollback journal kept in place (`journal_mode=PERSIST`), `synchronous=FULL`: a committed
batch survives a power cut, and a page appended is written once (WAL would write it twice:
to the log, then at a checkpoint), which spares an SD card. Every write transaction is
bounded (256 KiB of payload, 64 KiB on a nearly full disk; 512 deletes; one degradation
step), so its journal stays inside the disk headroom (`disk`), and on a disk another
program filled to the last byte the store can still delete and degrade inside the journal
space it keeps. Sequence numbers are handed out by the event loop's side from a block reserved
here (`seq_reserved` in `meta`, one small commit per block), so that a number is never
reused, not even after a power cut.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import structlog

from agent.clock import BOOT_ID, ClockWatch
from agent.events import correct_clock, decode, priority_of
from agent.store.degrade import Ledger, degrade_step, enforce_bounds
from agent.store.disk import HEADROOM_BYTES, LOW_BYTES, DiskSpace
from agent.store.inspect import read_stats_from
from agent.store.records import StoredEvent, StoreStats
from agent.store.schema import dropped_counts, migrate, read_meta, set_meta

log = structlog.get_logger("agent.store.queue")

Row = tuple[int, int, str, str, int, int, int | None, str | None, bytes]
"""An outbox row: seq, time_ns, kind, device, priority, size, mono_ns, boot, payload."""

_DISK_FULL_SHRINK = 0.8
"""On SQLITE_FULL, shrink the stored bytes to this share to make room inside the file."""
_ROW_SPACE = 1.5
"""Bytes of free pages a byte of payload needs at most (row header, index, page fill)."""
CHUNK_BYTES = 256 * 1024
"""Payload bytes of one write transaction at most: its journal and the file's growth stay
inside the disk headroom, however long the disk refused and however much is pending."""
CHUNK_BYTES_LOW = 64 * 1024
"""... and on a disk with little room left (under twice the headroom): a smaller one."""
_DELETE_CHUNK = 512
"""Acknowledged rows deleted in one transaction at most (after an outage: a small journal)."""
_DELETE_CHUNK_ROOMY = 4096
"""... while the disk has ROOMY_BYTES free: fewer commits (each two fsyncs) during a replay,
for a journal of about 2 MB (windows of 800 B)."""
ROOMY_BYTES = 64 << 20
_ROOM_SCAN_ROWS = 64
"""Windows one merge pass of `make_room` looks at: its journal must stay small."""
_BUSY_TIMEOUT_MS = 1000
"""How long a commit waits for a reader (`buffer stats`) to leave before it is retried."""


def row_of(seq: int, payload: bytes) -> Row:
    """The outbox row of an encoded event (used for what a crashed run's spool left)."""
    env = decode(payload)
    mono = env.mono_ns if env.clock == "unsynced" else None
    return (seq, env.time_ns, env.kind, env.device, priority_of(env.kind), len(payload), mono,
            env.boot if mono is not None else None, payload)


class Outbox:
    """Opened by `open()`; every method runs on the store's worker thread."""

    def __init__(self, path: Path, disk: DiskSpace, reserved: set[int],
                 reserved_lock: threading.Lock, max_age_ns: int | None) -> None:
        self.path = path
        self.disk = disk
        self.ledger = Ledger()
        self.max_bytes: int | None = None
        self.unwritten_bytes = 0
        """Payload bytes the last failed commit could not write (how much room to make)."""
        self._reserved, self._reserved_lock = reserved, reserved_lock
        self._max_age_ns = max_age_ns
        self._db: sqlite3.Connection | None = None

    @property
    def connection(self) -> sqlite3.Connection | None:
        """The open database, None before `open` and after `close`."""
        return self._db

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"event store {self.path} is not open")
        return self._db

    def open(self) -> dict[str, int]:
        """Open (and migrate) the database; its meta counters, with `top` the highest seq
        stored."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        # The journal file is kept (its header zeroed at each commit), never truncated below
        # LOW_BYTES: that space stays the store's own, so that on a disk another program
        # filled to the last byte it can still delete and degrade. A store an older agent
        # kept in WAL mode changes over here (unless a reader holds it open: then at a later
        # start; WAL is as safe, only costlier in writes).
        try:
            mode = db.execute("PRAGMA journal_mode=PERSIST").fetchone()[0]
        except sqlite3.OperationalError:  # locked: WAL and another process has it open
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "persist":
            log.warning("store_journal_mode_kept", path=str(self.path), mode=mode,
                        hint="another process had the store open; changed at the next start")
        db.execute(f"PRAGMA journal_size_limit={LOW_BYTES}")
        # FULL: each batch commit is fsynced, so a power cut loses at most the batch in memory.
        db.execute("PRAGMA synchronous=FULL")
        # Debian builds SQLite with secure_delete on: every freed page is zeroed, which writes
        # each delete twice and makes a delete on a full disk need as much journal as an insert.
        # The rows hold only what is sent to the broker anyway.
        db.execute("PRAGMA secure_delete=OFF")
        migrate(db)
        meta = read_meta(db)
        top = db.execute("SELECT max(seq), coalesce(sum(size), 0) FROM outbox").fetchone()
        self.ledger = Ledger(bytes=int(top[1]), compacted=meta.get("compacted", 0))
        self.ledger.dropped.update(dropped_counts(meta))
        self.ledger.load_gone(db)
        if "store_id" not in meta:  # this database's identity, for the cloud's ledger
            store_id = secrets.randbits(63)
            # On a full disk: made at a later start.
            with contextlib.suppress(sqlite3.OperationalError), self._transaction(db):
                set_meta(db, "store_id", store_id)
                meta["store_id"] = store_id
        self._db = db
        self.disk.hold_reserve()
        self.disk.limit_pages(db)
        return {**meta, "top": int(top[0] or 0)}

    def start(self, recovered: list[Row], meta: dict[str, int | None]) -> None:
        """At open: put back what a crashed run's spool held, and set `meta` (None: delete)."""
        db = self.db
        with self._transaction(db):
            before = db.total_changes
            db.executemany(_INSERT.replace("INSERT", "INSERT OR IGNORE"), recovered)
            if db.total_changes > before:
                self.ledger.bytes = int(db.execute(
                    "SELECT coalesce(sum(size), 0) FROM outbox").fetchone()[0])
            for key, value in meta.items():
                if value is None:
                    db.execute("DELETE FROM meta WHERE key = ?", (key,))
                else:
                    set_meta(db, key, value)

    def set_meta(self, values: dict[str, int]) -> None:
        """One small transaction (a seq block reserved, a clean stop)."""
        db = self.db
        with self._transaction(db):
            for key, value in values.items():
                set_meta(db, key, value)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        """One write transaction; on failure the ledger is restored with it."""
        before = self.ledger.copy()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back by itself (it does on SQLITE_FULL).
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.ledger = before
            raise

    def commit(
        self, rows: list[Row], acked: list[int], drops: Counter[str],
        drop_seqs: list[tuple[int, str]], reported_gone: int,
    ) -> tuple[int, int, sqlite3.Error | None]:
        """Delete `acked`, then insert `rows`, in transactions of bounded size. How many of
        each are done, and the error that stopped the rest (None: all done). `drops` (made on
        the event loop's side, the numbered ones' seqs in `drop_seqs`) join the ledger first,
        saved with the next transaction; gone ranges up to `reported_gone` are forgotten."""
        db = self.db
        self.ledger.count_dropped(drops, drop_seqs)
        if self.disk.hold_reserve():
            log.info("store_reserve_reclaimed", path=str(self.disk.reserve_path))
        deleted = inserted = 0
        try:
            if self.ledger.keeps_gone_upto(reported_gone):
                with self._transaction(db):
                    self.ledger.forget_gone(db, reported_gone)
            most = _DELETE_CHUNK_ROOMY if acked and self.disk.free_bytes() >= ROOMY_BYTES \
                else _DELETE_CHUNK
            while deleted < len(acked):
                seqs = acked[deleted:deleted + most]
                with self._transaction(db):
                    self.ledger.bytes -= self._delete(db, seqs)
                deleted += len(seqs)
                with self._reserved_lock:
                    self._reserved.difference_update(seqs)
            low = self.disk.free_bytes() < 2 * HEADROOM_BYTES
            for chunk in _chunks_by_size(rows, CHUNK_BYTES_LOW if low else CHUNK_BYTES):
                with self._transaction(db):
                    db.executemany(_INSERT, chunk)
                    self.ledger.bytes += sum(r[5] for r in chunk)
                    self.ledger.save_unsaved(db)
                    self._enforce(db, self.max_bytes)
                inserted += len(chunk)
            if not inserted and (self.ledger.unsaved or self.ledger.unsaved_gone):
                with self._transaction(db):
                    self.ledger.save_unsaved(db)
        except sqlite3.Error as exc:
            self.unwritten_bytes = sum(r[5] for r in rows[inserted:])
            return inserted, deleted, exc
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.disk.limit_pages(db)
        return inserted, deleted, None

    def _delete(self, db: sqlite3.Connection, seqs: list[int]) -> int:
        """Delete acknowledged rows (a bounded chunk of them); the bytes freed. The seqs go as
        one JSON array: one prepared statement whatever their number (a statement per count
        of `?` would fill the statement cache)."""
        which = (json.dumps(seqs),)
        freed: int = db.execute(
            f"SELECT coalesce(sum(size), 0) FROM outbox WHERE seq IN {_SEQS}", which).fetchone()[0]
        db.execute(f"DELETE FROM outbox WHERE seq IN {_SEQS}", which)
        return freed

    def _protected(self) -> set[int]:
        with self._reserved_lock:
            return set(self._reserved)

    def _enforce(self, db: sqlite3.Connection, max_bytes: int | None) -> None:
        enforce_bounds(db, self.ledger, max_bytes=max_bytes, max_age_ns=self._max_age_ns,
                       protected=self._protected())

    def make_room(self) -> None:
        """After SQLITE_FULL: if the disk itself is full give back the reserve; then shrink
        the data, a bounded transaction at a time (a big delete needs a big journal). Freed
        pages take the next inserts."""
        db = self.db
        if self.disk.low():
            self._release_reserve()
        # Room for what waits to be written, and some: free pages inside the file, which may
        # not grow; never more than half of what is stored at once, so that a burst cannot
        # push out every stored alarm.
        stored = self.ledger.bytes
        page_size = db.execute("PRAGMA page_size").fetchone()[0]

        def short_of_room() -> bool:
            free = db.execute("PRAGMA freelist_count").fetchone()[0] * page_size
            return (self.ledger.bytes > stored * _DISK_FULL_SHRINK
                    or free < _ROW_SPACE * self.unwritten_bytes)

        protected = self._protected()
        while self.ledger.bytes > stored / 2 and short_of_room():
            before = self.ledger.bytes
            try:
                with self._transaction(db):
                    degrade_step(db, self.ledger, protected, scan_rows=_ROOM_SCAN_ROWS)
                    self.ledger.save_unsaved(db)
            except sqlite3.Error:
                if not self._release_reserve():
                    raise
                continue
            if self.ledger.bytes >= before:
                break  # only rows being sent are left
        self.disk.limit_pages(db)
        log.warning("store_disk_full_degraded", path=str(self.path), bytes=self.ledger.bytes,
                    compacted=self.ledger.compacted, dropped=dict(self.ledger.dropped))

    def _release_reserve(self) -> bool:
        released = self.disk.release_reserve()
        if released:
            log.warning("store_reserve_released", path=str(self.disk.reserve_path),
                        free_bytes=self.disk.free_bytes())
        return released

    def save_losses(self, drops: Counter[str], drop_seqs: list[tuple[int, str]],
                    meta: dict[str, int]) -> None:
        """Save the loss counters (and `meta`) alone, a transaction of a page or two, the
        reserve given back first if the disk is full: at a stop, no loss is left uncounted."""
        db = self.db
        self.ledger.count_dropped(drops, drop_seqs)
        if self.disk.low():
            self.disk.release_reserve()
        with self._transaction(db):
            self.ledger.save_unsaved(db)
            for key, value in meta.items():
                set_meta(db, key, value)

    def read(self, after: int, upto: int, limit: int, synced: bool) -> list[StoredEvent]:
        """Rows with `after < seq <= upto`, oldest first, reserved for sending; events made
        before the clock was synchronized are corrected (and stored corrected) on the way."""
        db = self.db
        cursor = db.execute(
            "SELECT seq, kind, device, payload, mono_ns, boot FROM outbox "
            "WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?", (after, upto, limit))
        rows = []
        for number, kind, device, payload, mono_ns, boot in cursor.fetchall():
            payload = bytes(payload)
            if synced and mono_ns is not None and boot == BOOT_ID:
                payload = self._correct_clock(db, number, payload, mono_ns)
            rows.append(StoredEvent(number, kind, device, payload))
        with self._reserved_lock:
            self._reserved.update(r.seq for r in rows)
        return rows

    def _correct_clock(self, db: sqlite3.Connection, seq: int, payload: bytes, mono_ns: int) -> bytes:
        """Fix the time of an event made before the clock was synchronized, once and for good:
        stored corrected, so that a resend after a crash is the same bytes."""
        corrected = correct_clock(payload, ClockWatch.corrected(mono_ns))
        with self._transaction(db):
            db.execute("UPDATE outbox SET payload = ?, size = ?, mono_ns = NULL WHERE seq = ?",
                       (corrected, len(corrected), seq))
            self.ledger.bytes += len(corrected) - len(payload)
        return corrected

    def depth(self) -> int:
        count: int = self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return count

    def stats(self) -> StoreStats:
        return read_stats_from(self.db, self.path)


_SEQS = "(SELECT value FROM json_each(?))"
_INSERT = ("INSERT INTO outbox (seq, time_ns, kind, device, priority, size, mono_ns, boot,"
           " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _chunks_by_size(rows: list[Row], limit: int) -> Iterator[list[Row]]:
    """`rows` in runs of at most `limit` bytes of payload each."""
    chunk: list[Row] = []
    size = 0
    for row in rows:
        chunk.append(row)
        size += row[5]
        if size >= limit:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
