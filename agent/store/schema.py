"""The store's tables, their migrations, and the counters kept beside the events."""

from __future__ import annotations

import contextlib
import sqlite3

from agent.events import SAMPLES, priority_of

SCHEMA_VERSION = 4
SCHEMA = """
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
CREATE TABLE IF NOT EXISTS gone (
    id    INTEGER PRIMARY KEY,
    first INTEGER NOT NULL,
    last  INTEGER NOT NULL,
    kind  TEXT
);
"""
"""outbox: one row per event not yet acknowledged, its msgpack `payload` as it is sent;
`priority` orders what a full store gives up; `mono_ns`/`boot` are set while the clock was
not synchronized. meta: `store_id`, `last_seq`, `compacted` and `dropped.<kind>` counters.
gone: seq ranges given up (dropped, `kind` the kind; merged into another window, `kind`
NULL) until a `store_health` event naming them is safe on disk or with the broker."""


def migrate(db: sqlite3.Connection) -> None:
    """Bring a store written by an older agent up to SCHEMA_VERSION, in place."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    columns = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
    with contextlib.closing(db.cursor()) as cur:
        cur.execute("BEGIN IMMEDIATE")
        if columns and "priority" not in columns:  # version 1: no priority, size, clock
            cur.execute("ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 2")
            cur.execute("ALTER TABLE outbox ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
            cur.execute("ALTER TABLE outbox ADD COLUMN mono_ns INTEGER")
            cur.execute("ALTER TABLE outbox ADD COLUMN boot TEXT")
            for kind, in cur.execute("SELECT DISTINCT kind FROM outbox").fetchall():
                cur.execute("UPDATE outbox SET priority = ? WHERE kind = ?", (priority_of(kind), kind))
            cur.execute("UPDATE outbox SET size = length(payload)")
        if columns and version < 3:  # version 2: raw samples shared the priority of windows
            cur.execute("UPDATE outbox SET priority = ? WHERE kind = ?",
                        (priority_of(SAMPLES), SAMPLES))
        for statement in SCHEMA.strip().split(";"):
            if statement.strip():
                cur.execute(statement)
        cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        cur.execute("COMMIT")


def read_meta(db: sqlite3.Connection) -> dict[str, int]:
    return {str(k): int(v) for k, v in db.execute("SELECT key, value FROM meta")}


def set_meta(db: sqlite3.Connection, key: str, value: int) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def store_id_of(meta: dict[str, int]) -> str:
    """The store's identity as it is shown and sent: 16 hex digits ("" before it has one)."""
    return f"{meta['store_id']:016x}" if "store_id" in meta else ""


def dropped_counts(meta: dict[str, int]) -> dict[str, int]:
    return {k[len("dropped."):]: v for k, v in meta.items() if k.startswith("dropped.")}
