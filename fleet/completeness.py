"""The completeness report: per gateway and store, which seqs arrived, and every gap explained
or listed as unexplained.

A store numbers its events 1, 2, 3, ... without reuse, so what arrived is a set of seq
ranges (from `event_ids`) and what is missing are the holes between them (and before the
first). The agent accounts for events it did not send in its `store_health` events: seq
ranges it dropped (`dropped_seqs`, per kind) or merged into other windows (`merged_seqs`),
and the numbers a power cut may have taken before the broker had them (`seq_skipped`).
A hole covered by those is explained; the rest is unexplained: the report a machine
builder hands a customer. Windows a power cut caught open never had a seq: the agent
names them in `windows_lost` events, listed beside the gaps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

Range = tuple[int, int]


@dataclass(frozen=True, slots=True)
class LostWindow:
    device: str
    start: dt.datetime
    window_s: float

    def __str__(self) -> str:
        return f"{self.device} from {self.start:%Y-%m-%d %H:%M:%S} UTC ({self.window_s:g} s)"


@dataclass
class StoreReport:
    gateway: str
    store: str
    received: list[Range]
    duplicates: int
    accounted: list[tuple[Range, str]] = field(default_factory=list)
    """Ranges the agent said it dropped or merged, with why."""
    start: int = 1
    """The first seq expected: 1 (a store numbers from 1), or the first received with `since`."""
    windows_lost: list[LostWindow] = field(default_factory=list)
    """Device windows a power cut caught open (no seq: not part of any gap)."""

    @property
    def events(self) -> int:
        return sum(b - a + 1 for a, b in self.received)

    def gaps(self) -> list[Range]:
        holes, expected = [], self.start
        for first, last in self.received:
            if first > expected:
                holes.append((expected, first - 1))
            expected = max(expected, last + 1)
        return holes

    def explained(self) -> list[tuple[Range, str]]:
        """The parts of every gap the agent accounted for."""
        out = []
        for gap in self.gaps():
            for span, why in self.accounted:
                part = (max(gap[0], span[0]), min(gap[1], span[1]))
                if part[0] <= part[1]:
                    out.append((part, why))
        return out

    def unexplained(self) -> list[Range]:
        covered = sorted(span for span, _ in self.explained())
        out = []
        for first, last in self.gaps():
            cursor = first
            for a, b in covered:
                if b < cursor or a > last:
                    continue
                if a > cursor:
                    out.append((cursor, a - 1))
                cursor = max(cursor, b + 1)
            if cursor <= last:
                out.append((cursor, last))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"gateway": self.gateway, "store": self.store, "events": self.events,
                "received": self.received, "duplicates": self.duplicates,
                "gaps": self.gaps(),
                "explained": [{"seqs": span, "why": why} for span, why in self.explained()],
                "unexplained": self.unexplained(),
                "windows_lost": [{"device": w.device, "start": w.start.isoformat(),
                                  "window_s": w.window_s} for w in self.windows_lost]}


def completeness(conn: psycopg.Connection[Any], gateway: str | None = None,
                 since: dt.datetime | None = None) -> list[StoreReport]:
    """One report per (gateway, store), ordered by gateway."""
    where, args = _filter(gateway, since)
    islands = conn.execute(
        "SELECT gateway, store, min(seq), max(seq) FROM ("
        "  SELECT gateway, store, seq,"
        "         seq - row_number() OVER (PARTITION BY gateway, store ORDER BY seq) AS island"
        f"  FROM event_ids {where}) s "
        "GROUP BY gateway, store, island ORDER BY gateway, store, min(seq)", args).fetchall()
    reports: dict[tuple[str, str], StoreReport] = {}
    for gw, store, first, last in islands:
        key = (str(gw), str(store))
        if key not in reports:
            reports[key] = StoreReport(key[0], key[1], [], 0,
                                       start=int(first) if since is not None else 1)
        reports[key].received.append((int(first), int(last)))
    for gw, store, count in conn.execute("SELECT gateway, store, count FROM duplicates"):
        if (str(gw), str(store)) in reports:
            reports[(str(gw), str(store))].duplicates = int(count)
    for gw, store, kind, data in conn.execute(
            "SELECT e.gateway, i.store, e.kind, e.data FROM events e JOIN event_ids i "
            "USING (id) WHERE e.kind IN ('store_health', 'windows_lost') ORDER BY e.time"):
        report = reports.get((str(gw), str(store)))
        if report is None:
            continue
        if kind == "store_health":
            report.accounted.extend(_accounts(data))
        else:
            report.windows_lost.extend(_lost_windows(data))
    return list(reports.values())


def _lost_windows(data: dict[str, Any]) -> Iterable[LostWindow]:
    for entry in data.get("windows") or []:
        start = dt.datetime.fromtimestamp(int(entry["start_ns"]) / 1e9, dt.UTC)
        yield LostWindow(str(entry["dev"]), start, float(entry["window_s"]))


def _filter(gateway: str | None, since: dt.datetime | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if gateway is not None:
        clauses.append("gateway = %s")
        args.append(gateway)
    if since is not None:
        clauses.append("time >= %s")
        args.append(since)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


def _accounts(data: dict[str, Any]) -> Iterable[tuple[Range, str]]:
    for kind, spans in (data.get("dropped_seqs") or {}).items():
        for first, last in spans:
            yield (int(first), int(last)), f"dropped by the agent ({kind})"
    for first, last in data.get("merged_seqs") or []:
        yield (int(first), int(last)), "merged into other windows by the agent"
    if data.get("seq_skipped"):
        first, last = data["seq_skipped"]
        yield ((int(first), int(last)),
               "lost at a power cut of the gateway: not yet acknowledged by the broker")


def format_ranges(ranges: Iterable[Range]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in ranges) or "none"


def format_report(report: StoreReport) -> list[str]:
    unexplained = report.unexplained()
    missing = sum(b - a + 1 for a, b in report.gaps())
    lines = [(f"gateway {report.gateway} store {report.store or '(unknown)'}: "
              f"{report.events} events received, seqs {format_ranges(report.received)}; "
              f"{report.duplicates} duplicates (stored once)")]
    for span, why in report.explained():
        lines.append(f"  missing {format_ranges([span])}: {why}")
    for span in unexplained:
        lines.append(f"  missing {format_ranges([span])}: UNEXPLAINED")
    for window in report.windows_lost:
        lines.append(f"  window lost at a power cut (it had no seq): {window}")
    verdict = ("complete: every event made was received or accounted for by the agent"
               if not unexplained else
               f"{sum(b - a + 1 for a, b in unexplained)} of {missing} missing events "
               "unexplained")
    lines.append(f"  {verdict}")
    return lines
