"""How a store over its bounds degrades: raw samples go first, then old aggregates are
merged, then the rest is dropped by priority, alarms last.

Runs inside the caller's write transaction. Rows the uplink has reserved for
sending are never touched. Every merge and drop is counted in the `Ledger`,
mirrored in the meta table, and its seq kept (as ranges, in the `gone` table) until
a `store_health` event has named it, so that the cloud can tell which events are missing.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from agent.events import SAMPLES, WINDOW, decode, encode_envelope, priority_of
from agent.store.compaction import merge_windows
from agent.store.schema import set_meta

_COMPACT_SCAN_ROWS = 256
_DROP_BATCH_ROWS = 64
_DROP_BATCH_BYTES = 64 * 1024
"""A drop batch stops at this many payload bytes: each transaction's journal stays small."""

Gone = tuple[int, int, int, str | None]
"""A range of seqs given up: its id in `gone`, first and last seq, and the kind dropped
(None: windows merged into the window before them)."""


def ranges_of(seqs: Iterable[tuple[int, str | None]]) -> list[tuple[int, int, str | None]]:
    """(seq, kind) pairs as ranges of consecutive seqs of one kind."""
    out: list[tuple[int, int, str | None]] = []
    for seq, kind in sorted(seqs, key=lambda pair: pair[0]):
        if out and out[-1][2] == kind and out[-1][1] + 1 == seq:
            out[-1] = (out[-1][0], seq, kind)
        else:
            out.append((seq, seq, kind))
    return out


@dataclass
class Ledger:
    """Payload bytes stored now, and what was given up since the store was created."""

    bytes: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    compacted: int = 0
    unsaved: set[str] = field(default_factory=set)
    """Kinds whose `dropped` count changed outside the database (events dropped in memory)."""
    gone: list[Gone] = field(default_factory=list)
    """The rows of the `gone` table, oldest first."""
    unsaved_gone: list[tuple[int, str]] = field(default_factory=list)
    """(seq, kind) of events dropped in memory, not yet in `gone`."""
    next_gone_id: int = 1
    """Ids of `gone` rows only grow while the store is open (reports name them by id)."""

    def losses(self) -> int:
        return sum(self.dropped.values()) + self.compacted

    def copy(self) -> Ledger:
        return replace(self, dropped=Counter(self.dropped), unsaved=set(self.unsaved),
                       gone=list(self.gone), unsaved_gone=list(self.unsaved_gone))

    def load_gone(self, db: sqlite3.Connection) -> None:
        self.gone = [(int(i), int(a), int(b), k) for i, a, b, k in
                     db.execute("SELECT id, first, last, kind FROM gone ORDER BY id")]
        self.next_gone_id = self.gone[-1][0] + 1 if self.gone else 1

    def count_dropped(self, kinds: Counter[str], seqs: Iterable[tuple[int, str]] = ()) -> None:
        """Events dropped outside the database (in memory; `seqs`: those that had a number):
        counted, saved with the next transaction."""
        self.dropped.update(kinds)
        self.unsaved.update(kinds)
        self.unsaved_gone.extend(seqs)

    def save_unsaved(self, db: sqlite3.Connection) -> None:
        for kind in self.unsaved:
            set_meta(db, f"dropped.{kind}", self.dropped[kind])
        self.unsaved.clear()
        self.note_gone(db, self.unsaved_gone)
        self.unsaved_gone = []

    def note_gone(self, db: sqlite3.Connection, seqs: Iterable[tuple[int, str | None]]) -> None:
        """Keep the seqs given up, as ranges, until a report naming them is safe."""
        for first, last, kind in ranges_of(seqs):
            db.execute("INSERT INTO gone (id, first, last, kind) VALUES (?, ?, ?, ?)",
                       (self.next_gone_id, first, last, kind))
            self.gone.append((self.next_gone_id, first, last, kind))
            self.next_gone_id += 1

    def keeps_gone_upto(self, upto_id: int) -> bool:
        """Whether any range up to `upto_id` is still kept (`forget_gone` has work)."""
        return bool(self.gone) and self.gone[0][0] <= upto_id

    def forget_gone(self, db: sqlite3.Connection, upto_id: int) -> None:
        """The ranges up to `upto_id` were named in a report now safe: no longer kept."""
        db.execute("DELETE FROM gone WHERE id <= ?", (upto_id,))
        self.gone = [g for g in self.gone if g[0] > upto_id]

    def drop(self, db: sqlite3.Connection, victims: list[tuple[int, str, int]]) -> None:
        """Delete rows given as (seq, kind, size), and count them."""
        if not victims:
            return
        db.executemany("DELETE FROM outbox WHERE seq = ?", [(v[0],) for v in victims])
        self.note_gone(db, [(v[0], v[1]) for v in victims])
        kinds = Counter(v[1] for v in victims)
        self.dropped.update(kinds)
        self.bytes -= sum(v[2] for v in victims)
        for kind in kinds:
            set_meta(db, f"dropped.{kind}", self.dropped[kind])


def seq_accounts(gone: list[Gone]) -> dict[str, Any]:
    """`store_health`'s `dropped_seqs` (kind -> [[first, last], ...]) and `merged_seqs`."""
    dropped: dict[str, list[list[int]]] = {}
    merged: list[list[int]] = []
    for _, first, last, kind in gone:
        (merged if kind is None else dropped.setdefault(kind, [])).append([first, last])
    out: dict[str, Any] = {}
    if dropped:
        out["dropped_seqs"] = dropped
    if merged:
        out["merged_seqs"] = merged
    return out


def enforce_bounds(
    db: sqlite3.Connection, ledger: Ledger, *, max_bytes: int | None, max_age_ns: int | None,
    protected: set[int],
) -> None:
    """Drop what is too old, then degrade until the stored bytes fit `max_bytes`."""
    if max_age_ns is not None:
        cutoff = time.time_ns() - max_age_ns
        old = db.execute(
            "SELECT seq, kind, size FROM outbox WHERE time_ns < ? ORDER BY seq", (cutoff,)
        ).fetchall()
        ledger.drop(db, [r for r in old if r[0] not in protected])
    if max_bytes is None:
        return
    while ledger.bytes > max_bytes:
        if not degrade_step(db, ledger, protected):
            break  # only rows being sent are left: they leave once acknowledged


def degrade_step(
    db: sqlite3.Connection, ledger: Ledger, protected: set[int], *,
    scan_rows: int = _COMPACT_SCAN_ROWS,
) -> bool:
    """Give up one batch (a bounded transaction's worth); whether anything went.

    Raw samples first: bulky, and their windows keep their statistics. Then windows are
    merged (the merged ones merge again: older is coarser, the whole span stays covered),
    and only then is anything else dropped, by priority, alarms last."""
    return (drop_lowest_priority(db, ledger, protected, upto_priority=priority_of(SAMPLES))
            or compact_oldest_windows(db, ledger, protected, scan_rows=scan_rows)
            or drop_lowest_priority(db, ledger, protected))


def compact_oldest_windows(
    db: sqlite3.Connection, ledger: Ledger, protected: set[int], *,
    scan_rows: int = _COMPACT_SCAN_ROWS,
) -> bool:
    """Merge the oldest `scan_rows` window events of each device pairwise, never across one
    being sent; whether any were merged. The scan reaches past rows being sent: during a
    replay the oldest windows are in flight, and the next oldest must merge instead."""
    rows = db.execute(
        "SELECT seq, device, payload, size FROM outbox WHERE kind = ? ORDER BY seq LIMIT ?",
        (WINDOW, scan_rows + len(protected)),
    ).fetchall()
    # Per device, runs of consecutive windows none of which is being sent.
    runs: dict[str, list[list[tuple[int, bytes, int]]]] = {}
    taken = 0
    for seq, device, payload, size in rows:
        device_runs = runs.setdefault(device, [[]])
        if seq in protected:
            device_runs.append([])
        elif taken < scan_rows:
            device_runs[-1].append((seq, bytes(payload), size))
            taken += 1
    merged: list[tuple[int, str | None]] = []
    for windows in (run for device_runs in runs.values() for run in device_runs):
        for (seq_a, pay_a, size_a), (seq_b, pay_b, size_b) in zip(
            windows[0::2], windows[1::2], strict=False
        ):
            env_a, env_b = decode(pay_a), decode(pay_b)
            payload = encode_envelope(
                replace(env_a, time_ns=env_b.time_ns, data=merge_windows(env_a.data, env_b.data))
            )
            db.execute("UPDATE outbox SET payload = ?, size = ?, time_ns = ? WHERE seq = ?",
                       (payload, len(payload), env_b.time_ns, seq_a))
            db.execute("DELETE FROM outbox WHERE seq = ?", (seq_b,))
            ledger.bytes += len(payload) - size_a - size_b
            ledger.compacted += 1
            merged.append((seq_b, None))
    if merged:
        set_meta(db, "compacted", ledger.compacted)
        ledger.note_gone(db, merged)
    return bool(merged)


def drop_lowest_priority(
    db: sqlite3.Connection, ledger: Ledger, protected: set[int], *,
    upto_priority: int | None = None,
) -> bool:
    """Drop a batch of the oldest events of the lowest priority present (no higher than
    `upto_priority`); whether any went."""
    ceiling = upto_priority if upto_priority is not None else 2**31
    for (priority,) in db.execute(
        "SELECT DISTINCT priority FROM outbox WHERE priority <= ? ORDER BY priority", (ceiling,)
    ).fetchall():
        rows = db.execute(
            "SELECT seq, kind, size FROM outbox WHERE priority = ? ORDER BY seq LIMIT ?",
            (priority, _DROP_BATCH_ROWS + len(protected)),
        ).fetchall()
        victims = []
        size = 0
        for row in rows:
            if row[0] in protected:
                continue
            victims.append(row)
            size += row[2]
            if len(victims) >= _DROP_BATCH_ROWS or size >= _DROP_BATCH_BYTES:
                break
        if victims:
            ledger.drop(db, victims)
            return True
    return False
