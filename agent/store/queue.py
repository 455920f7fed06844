"""The durable outgoing queue: an event is sent at once, and on disk only while unacknowledged.

`put` numbers and encodes each event at once (its gateway-wide sequence number, from a
block reserved on disk, so a number is never reused, across power cuts included), keeps
it in memory and in the RAM spool (`spool`), and tells the uplink. Every
`commit_interval_s` the events that have waited at least half an interval without the
broker's acknowledgement are committed to SQLite (`outbox`, on one worker thread: the
event loop never waits on the disk); those acknowledged before are never written at all.
While the uplink reports the link down they are committed in bigger batches (every
`outage_commit_interval_s`, or 256 KiB), alarms still within `commit_interval_s`. So with
the link up the disk sees almost nothing, and a power cut loses at most the unacknowledged
events of the last commit interval; a crash or SIGKILL of the agent loses nothing (the
spool). A stored row is deleted once the uplink reports its acknowledgement. Bounded in
bytes and age (`degrade`), never filling the disk (`disk`); rows the uplink has read for
sending are reserved and never touched; events made before the clock was synchronized are
corrected when they are read for sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self, TypedDict, TypeVar, Unpack

import structlog

from agent.clock import BOOT_ID, ClockWatch
from agent.events import (
    ANOMALY,
    GATEWAY_DEVICE,
    STORE_HEALTH,
    Event,
    correct_clock,
    encode,
    priority_of,
)
from agent.store import spool as spooling
from agent.store.degrade import seq_accounts
from agent.store.disk import RESERVE_BYTES, DiskSpace
from agent.store.outbox import CHUNK_BYTES, Outbox, Row, row_of
from agent.store.records import StoredEvent, StoreError, StoreStats
from agent.store.schema import store_id_of
from agent.store.spool import Spool

log = structlog.get_logger(__name__)

T = TypeVar("T")

OUTAGE_COMMIT_INTERVAL_S = 20.0
"""Default commit interval while the link is down: batches big enough that a page appended
is about all a commit writes (a commit also rewrites a few pages it shares with the last)."""
SEQ_BLOCK = 8192
"""Sequence numbers reserved on disk at a time: one small commit per block."""
_ALARM_PRIORITY = priority_of(ANOMALY)
"""Events of this priority and above are on disk within `commit_interval_s`, link down too."""
_FAILURE_LOG_INTERVAL_S = 30.0
"""A commit that keeps failing is logged once, then at most this often."""
_STOP_RETRIES = 3
"""At a stop, how often a refused commit is retried (after making room) before what is
still pending is counted as dropped."""
_RANGES_PER_REPORT = 4096
"""Seq ranges one `store_health` event names at most (about 40 KB); the rest, in the next."""
_SPOOL_REWRITE_BYTES = 1 << 20
"""The spool is rewritten with what is still only in memory once it has grown this much."""


def _always() -> bool:
    return True


class StoreOptions(TypedDict, total=False):
    """How an EventStore commits and bounds itself; the defaults are in brackets."""

    commit_interval_s: float  # (0.5) unacknowledged events are on disk within this
    commit_max_events: int  # (200) ... or once this many unacknowledged events wait
    outage_commit_interval_s: float  # (20) ... while the link is down (alarms: as above)
    max_bytes: int | None  # (None) stored bytes over which old events are merged, then dropped
    max_age_s: float | None  # (None) events older than this are dropped
    max_pending_events: int  # (10,000) events held in memory while commits fail
    report_interval_s: float  # (60) at most one store_health event this often
    reserve_bytes: int  # (RESERVE_BYTES) disk space held back for the store's own needs
    clock_synchronized: Callable[[], bool]  # (always) whether events' times are trusted
    spool_dir: Path | None  # (/dev/shm) RAM-backed directory of the spool; None: no spool


@dataclasses.dataclass(slots=True)
class _Held:
    """An event in memory: its outbox row, and when it was made (monotonic s)."""

    row: Row
    made_s: float


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
        self._outage_interval_s = options.get("outage_commit_interval_s",
                                              OUTAGE_COMMIT_INTERVAL_S)
        self._link_up = True
        """As the uplink last reported (up without an uplink: commits as when acks are fast)."""
        max_age_s = options.get("max_age_s")
        self._max_pending = options.get("max_pending_events", 10_000)
        self._report_interval_s = options.get("report_interval_s", 60.0)
        self._clock_synchronized = options.get("clock_synchronized", _always)
        self._disk = DiskSpace(path, options.get("reserve_bytes", RESERVE_BYTES))
        self._reserved: set[int] = set()
        """Seqs read for sending, or acknowledged and not yet deleted: never degraded."""
        self._reserved_lock = threading.Lock()
        self._outbox = Outbox(path, self._disk, self._reserved, self._reserved_lock,
                              int(max_age_s * 1e9) if max_age_s else None)
        self._outbox.max_bytes = options.get("max_bytes")
        spool_dir = options.get("spool_dir", spooling.DEFAULT_DIR)
        self._spool = Spool(spooling.default_path(path, spool_dir), path, BOOT_ID)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._worker_tid = 0
        self._opened_mono = time.monotonic()
        self._next_seq = 1
        self._seq_reserved = 0
        self._memory: dict[int, _Held] = {}
        """Numbered events not on disk (nor acknowledged), in seq order."""
        self._unnumbered: list[Event] = []
        """Events waiting for a block of sequence numbers (only while the disk refuses)."""
        self._committing: set[int] = set()
        self._late_acks: set[int] = set()
        self._acked: list[int] = []
        """Acknowledged seqs stored on disk: deleted with the next commit."""
        self._disk_top = 0
        """The highest seq that may be on disk (below it, reads go to the database too)."""
        self._memory_drops: Counter[str] = Counter()
        """Events dropped on this side (memory bound, stop), not yet in the worker's ledger."""
        self._memory_drop_seqs: list[tuple[int, str]] = []
        """(seq, kind) of those that had a number."""
        self.store_id = ""
        """This database's identity (16 hex digits), in heartbeats and `store_health`."""
        self._gone_reported = 0
        """The last `gone` range named in a report made by this run."""
        self._gone_reports: dict[int, int] = {}
        """seq of a report naming gone ranges -> the last range it names."""
        self._gone_safe = 0
        """The last range named in a report that is now on disk or with the broker."""
        self._reported_losses = 0
        self._last_report_mono = -float("inf")
        self._failures = 0
        self._failure_logged_mono = -float("inf")
        self._wake = asyncio.Event()
        self._commit_signals: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()
        self._event_signals: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()

    @classmethod
    async def open(cls, path: Path, gateway: str, **options: Unpack[StoreOptions]) -> EventStore:
        """The store at `path`, its database open (StoreError when it cannot be)."""
        store = cls(path, gateway, **options)
        try:
            await store._start()
        except (OSError, sqlite3.Error) as exc:
            await store._call(store._outbox.close)
            store._executor.shutdown(wait=False)
            raise StoreError(
                f"cannot open the event store {path}: {exc} "
                "(is gateway.state_dir a writable directory?)"
            ) from exc
        return store

    async def _start(self) -> None:
        """Open the database; continue the sequence where the last run left it, putting back
        what a crashed run's spool held; reserve a first block of numbers."""
        self._worker_tid = await self._call(threading.get_native_id)
        meta = await self._call(self._outbox.open)
        self.store_id = store_id_of(meta)
        last = max(meta.get("last_seq", 0), meta["top"])
        reserved = meta.get("seq_reserved", last)
        recovered = self._spool.recover()
        rows = ([row_of(seq, payload) for seq, payload in sorted(recovered.events.items())]
                if recovered is not None else [])
        health: dict[str, object] = {}
        if recovered is not None:
            last = max(last, recovered.max_seq)
            if rows:
                # Sent, perhaps, without the acknowledgement seen: each may arrive twice.
                health["resent_after_crash"] = len(rows)
                log.warning("store_recovered_after_crash", events=len(rows),
                            path=str(self._spool.path), last_seq=last)
        elif not meta.get("clean", 1) and reserved > last:
            # A power cut (or a reboot after a crash): the numbers handed out after the last
            # commit are unknown. Skipped, never reused; those the cloud did not receive are
            # the loss, at most one commit interval of unacknowledged events.
            health["seq_skipped"] = [last + 1, reserved]
            log.warning("store_unclean_stop", seq_skipped_from=last + 1, seq_skipped_to=reserved,
                        detail="events of the last commit interval the broker had not "
                               "acknowledged may be lost")
            last = reserved
        self._next_seq = last + 1
        self._seq_reserved = last + SEQ_BLOCK
        await self._call(lambda: self._outbox.start(rows, {
            "last_seq": last, "seq_reserved": self._seq_reserved, "clean": 0}))
        self._disk_top = max(meta["top"], rows[-1][0] if rows else 0)
        self._spool.start(last)
        self._reported_losses = self._outbox.ledger.losses()
        if health:
            self.put([Event(STORE_HEALTH, GATEWAY_DEVICE, time.time_ns(),
                            {**self._health_data(), **health})])

    # --- writing --------------------------------------------------------------------------

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def put(self, events: Iterable[Event], *, bounded: bool = True) -> None:
        """Number the events, hand them to the uplink, keep them until acknowledged or
        committed (never blocks; bounded while the disk refuses, but for the store's own
        reports: `bounded=False`)."""
        now = time.monotonic()
        fresh: list[Row] = []
        for event in events:
            if self._unnumbered or self._next_seq > self._seq_reserved:
                self._unnumbered.append(event)
            else:
                fresh.append(self._number(event))
        self._hold(fresh, now)
        if (self._unnumbered or (self._link_up and len(self._memory) >= self._max_events)
                or self._seq_reserved - self._next_seq < SEQ_BLOCK // 2):
            self._wake.set()
        overflow = self.pending_count - self._max_pending
        if bounded and overflow > 0:
            self._drop_pending(overflow)

    def _number(self, event: Event) -> Row:
        seq = self._next_seq
        self._next_seq += 1
        payload = encode(event, gateway=self._gateway, seq=seq, boot=BOOT_ID,
                         store=self.store_id)
        boot = BOOT_ID if event.mono_ns is not None else None
        return (seq, event.time_ns, event.kind, event.device, priority_of(event.kind),
                len(payload), event.mono_ns, boot, payload)

    def _hold(self, rows: list[Row], now: float) -> None:
        if not rows:
            return
        for row in rows:
            self._memory[row[0]] = _Held(row, now)
        self._spool.add((r[0], r[8]) for r in rows)
        for signal in self._event_signals:
            signal.set()

    def _drop_pending(self, count: int) -> None:
        """Memory is bounded too: drop the oldest events of the lowest priority first (never
        one being sent or committed)."""
        with self._reserved_lock:
            busy = self._reserved | self._committing
        held = [(r.row[4], r.row[0]) for r in self._memory.values() if r.row[0] not in busy]
        held += [(priority_of(e.kind), self._next_seq + i) for i, e in enumerate(self._unnumbered)]
        victims = {seq for _, seq in sorted(held)[:count]}
        gone = [seq for seq in victims if seq in self._memory]
        for seq in gone:
            kind = self._memory.pop(seq).row[2]
            self._memory_drops[kind] += 1
            self._memory_drop_seqs.append((seq, kind))
        self._spool.gone(gone)
        kept = []
        for i, event in enumerate(self._unnumbered):
            if self._next_seq + i in victims:
                self._memory_drops[event.kind] += 1
            else:
                kept.append(event)
        self._unnumbered = kept
        log.error("store_pending_dropped", events=len(victims), path=str(self.path),
                  reason="the disk refused writes for too long")

    def link(self, up: bool) -> None:
        """The uplink's connection state, as it changes: while the link is down, what waits
        is committed in bigger batches (it will wait long anyway), sparing the disk."""
        self._link_up = up

    def ack(self, *seqs: int) -> None:
        """The broker has these events: forget each, or delete it with the next commit
        (reserved until then, so that no degradation counts it as dropped)."""
        for seq in seqs:
            if self._gone_reports:
                self._report_safe(seq)
            if seq in self._committing:
                self._late_acks.add(seq)
                self._spool.gone((seq,))
            elif self._memory.pop(seq, None) is not None:
                self._spool.gone((seq,))
                with self._reserved_lock:
                    self._reserved.discard(seq)
            else:
                self._acked.append(seq)

    def release(self, seq: int) -> None:
        """The event was not sent after all: it may be compacted or dropped again."""
        with self._reserved_lock:
            self._reserved.discard(seq)

    @property
    def pending_count(self) -> int:
        """Events accepted, not acknowledged and not yet on disk."""
        return len(self._memory) + len(self._unnumbered)

    def commit_signal(self) -> asyncio.Event:
        """An event of the caller's own, set after each commit that wrote events."""
        signal = asyncio.Event()
        self._commit_signals.add(signal)
        return signal

    def events_signal(self) -> asyncio.Event:
        """An event of the caller's own, set when new events can be read: a reader clears it
        before it reads `last_seq`, then waits on it for more."""
        signal = asyncio.Event()
        self._event_signals.add(signal)
        return signal

    @property
    def last_seq(self) -> int:
        """The highest sequence number handed out."""
        return self._next_seq - 1

    async def writer(self) -> None:
        """Commit what stays unacknowledged, every half commit interval, until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s / 2)
            self._wake.clear()
            await self._commit(everything=False)

    async def flush(self) -> None:
        """Commit every event not acknowledged now, and report degradation if there was any
        (whenever the last report was: a stop names what the store gave up before it ends)."""
        await self._commit(everything=True, report_now=True)

    async def _commit(self, *, everything: bool, report_now: bool = False) -> None:
        self._report_losses(now=report_now)
        if self._unnumbered or self._seq_reserved - self._next_seq < SEQ_BLOCK // 2:
            await self._reserve_seqs()
        rows = self._due(everything)
        forget = self._gone_safe if self._outbox.ledger.keeps_gone_upto(self._gone_safe) else 0
        if not rows and not self._acked and not self._memory_drops and not forget:
            self._rewrite_spool_if_large()
            return
        acked, self._acked = self._acked, []
        drops, self._memory_drops = self._memory_drops, Counter()
        drop_seqs, self._memory_drop_seqs = self._memory_drop_seqs, []
        self._committing = {r[0] for r in rows}
        job = asyncio.ensure_future(self._call(
            lambda: self._outbox.commit(rows, acked, drops, drop_seqs, forget)))
        try:
            inserted, deleted, error = await asyncio.shield(job)
        except asyncio.CancelledError:
            # The commit runs on in its thread: what it did not do must not be forgotten.
            inserted, deleted, _ = await job
            self._settle(rows, inserted, acked, deleted)
            raise
        self._settle(rows, inserted, acked, deleted)
        if error is None:
            if self._failures:
                log.info("store_commit_recovered", path=str(self.path), failures=self._failures)
                self._failures = 0
            return
        await self._commit_failed(error)

    def _due(self, everything: bool) -> list[Row]:
        """The events to commit now, oldest first (always a prefix of those in memory): those
        waiting half an interval, or all once `commit_max_events` wait. With the link down,
        all once the oldest waited `outage_commit_interval_s` or CHUNK_BYTES wait, and
        until then those up to the last alarm waiting half an interval."""
        held = list(self._memory.values())
        if not held:
            return []
        now = time.monotonic()
        cutoff = now - self._interval_s / 2
        if everything or (self._link_up and len(held) >= self._max_events) or (
                not self._link_up and (held[0].made_s <= now - self._outage_interval_s
                                       or sum(h.row[5] for h in held) >= CHUNK_BYTES)):
            return [h.row for h in held]
        upto = 0
        for i, h in enumerate(held):
            if h.made_s > cutoff:
                break
            if self._link_up or h.row[4] >= _ALARM_PRIORITY:
                upto = i + 1
        return [h.row for h in held[:upto]]

    def _settle(self, rows: list[Row], inserted: int, acked: list[int], deleted: int) -> None:
        """After a commit: what is on disk leaves memory; what was not done stays, in order."""
        for row in rows[:inserted]:
            seq = row[0]
            self._memory.pop(seq, None)
            self._report_safe(seq)
            if seq in self._late_acks:
                self._acked.append(seq)
        for row in rows[inserted:]:
            if row[0] in self._late_acks:  # acknowledged meanwhile: never written
                self._memory.pop(row[0], None)
                self.release(row[0])
        self._late_acks.clear()
        self._committing = set()
        self._acked[:0] = acked[deleted:]
        if inserted:
            self._disk_top = max(self._disk_top, rows[inserted - 1][0])
            self._restart_spool()
            for signal in self._commit_signals:
                signal.set()

    def _restart_spool(self) -> None:
        """The spool anew: what is only in memory, and the highest number handed out."""
        self._spool.start(self.last_seq, ((h.row[0], h.row[8]) for h in self._memory.values()))

    def _rewrite_spool_if_large(self) -> None:
        if self._spool.written > _SPOOL_REWRITE_BYTES:
            self._restart_spool()

    async def _commit_failed(self, error: sqlite3.Error) -> None:
        full = isinstance(error, sqlite3.OperationalError) and "full" in str(error)
        self._failures += 1
        now = time.monotonic()
        if now - self._failure_logged_mono >= _FAILURE_LOG_INTERVAL_S:
            self._failure_logged_mono = now
            if getattr(error, "sqlite_errorname", "") == "SQLITE_BUSY":  # a reader, not a fault
                log.warning("store_commit_deferred", path=str(self.path),
                            events=self.pending_count,
                            reason="another process is reading the store (edge-agent buffer "
                                   "stats or export); retried, the events wait in memory")
            else:
                log.error("store_commit_failed", path=str(self.path), error=str(error),
                          events=self.pending_count, disk_full=full, failures=self._failures,
                          free_bytes=self._disk.free_bytes())
        if full:
            try:
                await self._call(self._outbox.make_room)
            except sqlite3.Error as room_exc:
                log.error("store_cannot_make_room", path=str(self.path), error=str(room_exc),
                          hint="the disk is full: free space on it (gateway.state_dir)")

    async def _reserve_seqs(self) -> None:
        """The next block of sequence numbers, on disk before any of them is handed out."""
        mark = max(self._seq_reserved, self._next_seq - 1) + SEQ_BLOCK
        try:
            await self._call(lambda: self._outbox.set_meta({"seq_reserved": mark}))
        except sqlite3.Error as exc:
            log.error("store_seq_block_failed", path=str(self.path), error=str(exc),
                      waiting=len(self._unnumbered))
            return
        self._seq_reserved = mark
        waiting, self._unnumbered = self._unnumbered, []
        self._hold([self._number(e) for e in waiting], time.monotonic())

    def _health_data(self) -> dict[str, object]:
        ledger = self._outbox.ledger
        return {
            "store": self.store_id,
            "dropped": dict(ledger.dropped + self._memory_drops),
            "compacted": ledger.compacted,
            "bytes": ledger.bytes,
            "max_bytes": self._outbox.max_bytes,
        }

    def _report_losses(self, *, now: bool = False) -> None:
        """A `store_health` event when something was given up since the last one (at most
        one per report interval, unless `now`), naming the seqs no report of this run named."""
        losses = self._outbox.ledger.losses() + self._memory_drops.total()
        fresh = [g for g in self._outbox.ledger.gone if g[0] > self._gone_reported]
        mono = time.monotonic()
        if ((losses == self._reported_losses and not fresh)
                or (not now and mono - self._last_report_mono < self._report_interval_s)):
            return
        self._reported_losses, self._last_report_mono = losses, mono
        data = self._health_data()
        log.warning("store_degraded", **data)
        named = fresh[:_RANGES_PER_REPORT]
        data.update(seq_accounts(named))
        self.put([Event(STORE_HEALTH, GATEWAY_DEVICE, time.time_ns(), data)], bounded=False)
        if named:
            self._gone_reported = named[-1][0]
            if not self._unnumbered:
                self._gone_reports[self.last_seq] = named[-1][0]

    def _report_safe(self, seq: int) -> None:
        """`seq` is on disk or with the broker: if it is a report, what it names is safe."""
        if self._gone_reports and seq in self._gone_reports:
            self._gone_safe = max(self._gone_safe, self._gone_reports.pop(seq))

    # --- reading --------------------------------------------------------------------------

    async def read_after(self, seq: int, limit: int, *, upto: int | None = None) -> list[StoredEvent]:
        """Events with `seq < number <= upto`, oldest first, reserved for sending: from the
        database below what may be on disk, then from memory."""
        synced = self._clock_synchronized()
        top = upto if upto is not None else 2**63 - 1
        rows: list[StoredEvent] = []
        if seq < self._disk_top:
            rows = await self._call(lambda: self._outbox.read(seq, top, limit, synced))
            if len(rows) >= limit:
                return rows
        after = rows[-1].seq if rows else seq
        taken = []
        for number, held in self._memory.items():
            if number <= after:
                continue
            if number > top or len(rows) >= limit:
                break
            row = held.row
            if synced and row[6] is not None and row[7] == BOOT_ID:
                corrected = correct_clock(row[8], ClockWatch.corrected(row[6]))
                row = held.row = (*row[:5], len(corrected), None, None, corrected)
            rows.append(StoredEvent(number, row[2], row[3], row[8]))
            taken.append(number)
        with self._reserved_lock:
            self._reserved.update(taken)
        return rows

    async def depth(self) -> int:
        """Events on disk not yet acknowledged by the broker."""
        return await self._call(self._outbox.depth)

    async def stats(self) -> StoreStats:
        stats = await self._call(self._outbox.stats)
        return dataclasses.replace(stats, last_seq=max(stats.last_seq, self.last_seq))

    def bytes_written(self) -> int:
        """Bytes the store's thread caused to be written to the disk since the store opened
        (`write_bytes` of its /proc io; 0 where the kernel does not count them, as on tmpfs)."""
        try:
            with open(f"/proc/self/task/{self._worker_tid}/io") as io:
                for line in io:
                    if line.startswith("write_bytes:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def bytes_written_per_day(self) -> float:
        """`bytes_written`, as a rate per day since the store opened."""
        elapsed_s = max(time.monotonic() - self._opened_mono, 1.0)
        return self.bytes_written() * 86400 / elapsed_s

    # --- lifetime -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit what is pending; what the disk still refuses is counted as dropped. A
        clean stop leaves the exact last sequence number, so the next start continues it."""
        await self.flush()
        for _ in range(_STOP_RETRIES):
            if not self._memory and not self._acked and not self._unnumbered:
                break
            await self.flush()
        lost = Counter(h.row[2] for h in self._memory.values())
        lost.update(e.kind for e in self._unnumbered)
        drop_seqs = self._memory_drop_seqs + [(h.row[0], h.row[2]) for h in self._memory.values()]
        self._memory, self._unnumbered, self._memory_drop_seqs = {}, [], []
        drops, self._memory_drops = self._memory_drops + lost, Counter()
        last = self.last_seq
        try:
            await self._call(lambda: self._outbox.save_losses(
                drops, drop_seqs, {"last_seq": last, "seq_reserved": last, "clean": 1}))
        except sqlite3.Error as exc:
            log.error("store_losses_not_saved", path=str(self.path), error=str(exc),
                      dropped=dict(drops))
        if lost:
            log.error("store_events_lost_at_stop", path=str(self.path), dropped=dict(lost),
                      reason="the disk refused writes")
        self._spool.close(remove=True)
        await self._call(self._outbox.close)
        self._executor.shutdown(wait=True)

    # The database and the byte bound, for tests that squeeze them.

    @property
    def _db(self) -> sqlite3.Connection | None:
        return self._outbox.connection

    @property
    def _max_bytes(self) -> int | None:
        return self._outbox.max_bytes

    @_max_bytes.setter
    def _max_bytes(self, value: int | None) -> None:
        self._outbox.max_bytes = value
