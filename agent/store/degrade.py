"""How a store over its bounds degrades: raw samples go first, then old aggregates are
merged, then the rest is dropped by priority, alarms last.

Runs inside the caller's write transaction. Rows the uplink has reserved for
sending are never touched. Every merge and drop is counted in the `Ledger`,
mirrored in the meta table, so that the cloud can be told exactly what is missing.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from agent.events import SAMPLES, WINDOW, decode, encode_envelope, priority_of
from agent.store.compaction import merge_windows
from agent.store.schema import set_meta

_COMPACT_SCAN_ROWS = 256
_DROP_BATCH_ROWS = 64
_DROP_BATCH_BYTES = 64 * 1024
"""A drop batch stops at this many payload bytes: each transaction's WAL stays small."""


@dataclass
class Ledger:
    """Payload bytes stored now, and what was given up since the store was created."""

    bytes: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    compacted: int = 0
    unsaved: set[str] = field(default_factory=set)
    """Kinds whose `dropped` count changed outside the database (events dropped in memory)."""

    def losses(self) -> int:
        return sum(self.dropped.values()) + self.compacted

    def copy(self) -> Ledger:
        return replace(self, dropped=Counter(self.dropped), unsaved=set(self.unsaved))

    def count_dropped(self, kinds: Counter[str]) -> None:
        """Events dropped outside the database (in memory): counted, saved with the next
        transaction."""
        self.dropped.update(kinds)
        self.unsaved.update(kinds)

    def save_unsaved(self, db: sqlite3.Connection) -> None:
        for kind in self.unsaved:
            set_meta(db, f"dropped.{kind}", self.dropped[kind])
        self.unsaved.clear()

    def drop(self, db: sqlite3.Connection, victims: list[tuple[int, str, int]]) -> None:
        """Delete rows given as (seq, kind, size), and count them."""
        if not victims:
            return
        db.executemany("DELETE FROM outbox WHERE seq = ?", [(v[0],) for v in victims])
        kinds = Counter(v[1] for v in victims)
        self.dropped.update(kinds)
        self.bytes -= sum(v[2] for v in victims)
        for kind in kinds:
            set_meta(db, f"dropped.{kind}", self.dropped[kind])


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
    """Merge the oldest window events of each device pairwise; whether any were merged."""
    rows = db.execute(
        "SELECT seq, device, payload, size FROM outbox WHERE kind = ? ORDER BY seq LIMIT ?",
        (WINDOW, scan_rows),
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
            ledger.bytes += len(merged) - size_a - size_b
            ledger.compacted += 1
            merged_any = True
    if merged_any:
        set_meta(db, "compacted", ledger.compacted)
    return merged_any


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
