"""`edge-agent buffer stats|export`: what the store holds, read-only, while the agent runs."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TextIO

from agent.cli.tail import format_time
from agent.events import DecodeError, decode, wire_fields
from agent.store import StoreStats, export_events, read_stats


def _age(time_ns: int | None) -> str:
    if time_ns is None:
        return "-"
    seconds = max(0.0, (time.time_ns() - time_ns) / 1e9)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def stats_lines(path: Path, stats: StoreStats) -> list[str]:
    lines = [
        f"store       {path}",
        f"events      {stats.depth} waiting to be acknowledged by the broker",
        f"bytes       {stats.bytes} of events, {stats.file_bytes} on disk (with its journal)",
        (
            f"oldest      {format_time(stats.oldest_time_ns) if stats.oldest_time_ns else '-'}"
            f" ({_age(stats.oldest_time_ns)} ago)"
        ),
        f"newest      {format_time(stats.newest_time_ns) if stats.newest_time_ns else '-'}",
        f"last seq    {stats.last_seq}",
    ]
    for kind, count in sorted(stats.by_kind.items()):
        lines.append(f"  {kind:<18} {count}")
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(stats.dropped.items())) or "none"
    lines.append(f"dropped     {dropped}")
    lines.append(f"compacted   {stats.compacted} windows merged into coarser ones")
    return lines


def print_stats(path: Path, out: TextIO, as_json: bool) -> None:
    stats = read_stats(path)
    if as_json:
        out.write(json.dumps({"path": str(path), **dataclasses.asdict(stats)}) + "\n")
    else:
        out.write("\n".join(stats_lines(path, stats)) + "\n")


def export(path: Path, out: TextIO) -> int:
    """Every stored event as a JSON line, oldest first; the count written."""
    count = 0
    for row in export_events(path):
        try:
            record = {"topic_kind": row.kind, **wire_fields(decode(row.payload))}
        except DecodeError as exc:
            record = {"seq": row.seq, "kind": row.kind, "dev": row.device,
                      "error": f"undecodable: {exc}"}
        out.write(json.dumps(record) + "\n")
        count += 1
    return count
