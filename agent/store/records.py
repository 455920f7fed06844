"""What the store hands out: stored events, statistics, and its one error."""

from __future__ import annotations

from dataclasses import dataclass


class StoreError(Exception):
    """The store cannot be opened or read: the message says which file and why."""


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
    """Database file plus its journal on disk."""
    oldest_time_ns: int | None
    newest_time_ns: int | None
    last_seq: int
    by_kind: dict[str, int]
    dropped: dict[str, int]
    """Events dropped since the store was created, per kind."""
    compacted: int
    """Window events merged into others since the store was created."""
    store_id: str = ""
    """The database's identity (16 hex digits; empty before it has one)."""
