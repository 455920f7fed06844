"""Writing a batch of received messages into PostgreSQL in one transaction, each event once.

Events go through a temporary table filled by `COPY`, then into `event_ids` (the
idempotency key: a resend or a second ingest process's copy carries the same id and is
counted as a duplicate, never stored twice) and `events`, in one statement. Status
messages update `gateway_status` when newer; what decodes as neither is kept in
`rejected`. The store a seq belongs to is the one its event's id names (`<store>-<seq>`);
for an agent whose ids are UUIDs (older, or a store without an identity yet), the one the
gateway's latest heartbeat (`store.id`) or `store_health` (`store`) names. Blocking: the
ingest calls it from a worker thread.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog

from agent.events import HEARTBEAT, STORE_HEALTH, DecodeError, Envelope, decode, store_of
from agent.uplink.presence import Presence, PresenceDecodeError, decode_presence
from fleet.clocks import (
    clock_of,
    known_clocks,
    save_corrected,
    stored_unsynced,
    true_time,
)
from fleet.schema import migrate, month_bounds, month_partition, partition_name

log = structlog.get_logger(__name__)

@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes


@dataclass
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    statuses: int = 0
    rejected: int = 0

    def add(self, other: BatchResult) -> None:
        """Sum another batch's counts into this one (an ingest's totals)."""
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.statuses += other.statuses
        self.rejected += other.rejected


def store_named_by(env: Envelope) -> str:
    """The store id a heartbeat (`store.id`) or a `store_health` event (`store`) names."""
    store = env.data.get("store")
    if env.kind == HEARTBEAT and isinstance(store, dict):
        store = store.get("id")
    elif env.kind != STORE_HEALTH:
        return ""
    return store if isinstance(store, str) else ""


@dataclass
class FleetDatabase:
    """One connection, used from one thread at a time."""

    conn: psycopg.Connection[tuple[Any, ...]]
    stores: dict[str, str] = field(default_factory=dict)
    """Each gateway's current store id, from its heartbeats."""
    partitions: set[str] = field(default_factory=set)
    month_ns: tuple[int, int] = (0, 0)
    """The bounds of the last month whose partition was known to exist (ns)."""

    @classmethod
    def connect(cls, dsn: str) -> FleetDatabase:
        conn: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(dsn)
        migrate(conn)
        db = cls(conn)
        rows = conn.execute(
            "SELECT DISTINCT ON (gateway) gateway, data->'store'->>'id' FROM events "
            "WHERE kind = 'heartbeat' AND data->'store' ? 'id' ORDER BY gateway, seq DESC")
        db.stores.update({str(g): str(s) for g, s in rows.fetchall()})
        conn.commit()
        return db

    def close(self) -> None:
        self.conn.close()

    def store(self, batch: Sequence[Received]) -> BatchResult:
        """Commit the batch; when this returns, every message of it may be acknowledged. A
        message the database refuses (a NUL in a name, a forged document) would fail its
        whole batch for ever: the batch is then stored one message at a time, and the one
        at fault kept in `rejected`."""
        try:
            return self._store(batch)
        except (psycopg.DataError, ValueError, TypeError) as exc:
            if len(batch) > 1:
                result = BatchResult()
                for message in batch:
                    result.add(self.store([message]))
                return result
            return self._reject(batch[0], f"{type(exc).__name__}: {exc}")

    def _reject(self, message: Received, error: str) -> BatchResult:
        with self.conn.transaction():
            self._insert_rejected(message, error)
        return BatchResult(rejected=1)

    def _insert_rejected(self, message: Received, error: str) -> None:
        """Kept aside, payload and all (text columns hold no NUL)."""
        self.conn.execute("INSERT INTO rejected (topic, error, payload) VALUES (%s, %s, %s)",
                          (message.topic.replace("\x00", ""), error.replace("\x00", ""),
                           message.payload))
        log.warning("fleet_message_rejected", topic=message.topic, error=error)

    def _store(self, batch: Sequence[Received]) -> BatchResult:
        result = BatchResult()
        events: list[tuple[Received, Envelope, str]] = []
        statuses: list[Presence] = []
        rejected: list[tuple[Received, str]] = []
        for message in batch:
            try:
                env = decode(message.payload)
            except DecodeError as exc:
                try:
                    statuses.append(decode_presence(message.payload))
                except PresenceDecodeError:
                    rejected.append((message, str(exc)))
                continue
            store_id = store_of(env.id) or store_named_by(env)
            if store_id:
                self.stores[env.gateway] = store_id
            events.append((message, env, store_id or self.stores.get(env.gateway, "")))
        created: set[str] = set()
        with self.conn.transaction():
            if events:
                events = self._at_true_times(events)
                fresh = self._insert(events, created)
                result.stored = len(fresh)
                result.duplicates = len(events) - len(fresh)
                self._count_duplicates(events, fresh)
                self._correct_stored(events, created)
            for status in statuses:
                self._status(status)
            result.statuses = len(statuses)
            for message, error in rejected:
                self._insert_rejected(message, error)
            result.rejected = len(rejected)
        self.partitions |= created  # only once committed: a rollback takes them back too
        return result

    def _at_true_times(self, events: list[tuple[Received, Envelope, str]],
                       ) -> list[tuple[Received, Envelope, str]]:
        """Unsynced events whose boot's `clock` event is known (stored, or in the batch) at
        their true time."""
        boots = {(env.gateway, env.boot) for _, env, _ in events
                 if env.clock == "unsynced" and env.boot is not None}
        if not boots:
            return events
        clocks = known_clocks(self.conn, boots)
        clocks.update(c for c in (clock_of(env) for _, env, _ in events) if c is not None)
        out = []
        for message, env, store in events:
            clock = clocks.get((env.gateway, env.boot or ""))
            out.append((message, true_time(env, clock) if clock else env, store))
        return out

    def _correct_stored(self, events: list[tuple[Received, Envelope, str]],
                        created: set[str]) -> None:
        """A `clock` event in the batch: its reference kept, and the events of its boot
        stored before it set to their true time."""
        for _, env, _ in events:
            found = clock_of(env)
            if found is None:
                continue
            (gateway, boot), clock = found
            self.conn.execute("INSERT INTO clocks VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                              (gateway, boot, *clock))
            for stored in stored_unsynced(self.conn, gateway, boot):
                fixed = true_time(stored, clock)
                self._partition_for(fixed, created)
                save_corrected(self.conn, fixed)

    def _partition_for(self, env: Envelope, created: set[str]) -> None:
        first_ns, following_ns = self.month_ns
        if first_ns <= env.time_ns < following_ns:  # most events: the month of the last one
            return
        moment = event_time(env)
        name = partition_name(moment)
        if name in self.partitions:  # committed: safe to remember
            first, following = month_bounds(moment)
            self.month_ns = (int(first.timestamp()) * 10**9, int(following.timestamp()) * 10**9)
        elif name not in created:
            created.add(month_partition(self.conn, moment))

    def _insert(self, events: list[tuple[Received, Envelope, str]], created: set[str]) -> set[str]:
        conn = self.conn
        for _, env, _ in events:
            self._partition_for(env, created)
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (id text, gateway text, "
                     "store text, seq bigint, kind text, device text, time timestamptz, "
                     "time_ns bigint, clock text, historical boolean, data jsonb, topic text, "
                     "mono_ns bigint, boot text) ON COMMIT DELETE ROWS")
        with conn.cursor() as cur:
            with cur.copy("COPY incoming FROM STDIN") as copy:
                for message, env, store in events:
                    copy.write_row((env.id, env.gateway, store, env.seq, env.kind, env.device,
                                    event_time(env), env.time_ns, env.clock, env.historical,
                                    json_text(env.data), message.topic, env.mono_ns,
                                    env.boot))
            cur.execute(
                "WITH fresh AS (INSERT INTO event_ids (id, gateway, store, seq, time) "
                "  SELECT DISTINCT ON (id) id, gateway, store, seq, time FROM incoming "
                "  ON CONFLICT (id) DO NOTHING RETURNING id) "
                "INSERT INTO events (gateway, seq, id, kind, device, time, time_ns, clock, "
                "  historical, data, topic, mono_ns, boot) "
                "SELECT i.gateway, i.seq, i.id, i.kind, i.device, i.time, i.time_ns, i.clock, "
                "  i.historical, i.data, i.topic, i.mono_ns, i.boot "
                "FROM (SELECT DISTINCT ON (id) * FROM incoming) i JOIN fresh USING (id) "
                "RETURNING id")
            return {str(row[0]) for row in cur.fetchall()}

    def _count_duplicates(self, events: list[tuple[Received, Envelope, str]],
                          fresh: set[str]) -> None:
        seen: set[str] = set()
        counts: Counter[tuple[str, str]] = Counter()
        for _, env, store in events:
            if env.id in fresh and env.id not in seen:
                seen.add(env.id)
            else:
                counts[(env.gateway, store)] += 1
        for (gateway, store), count in counts.items():
            self.conn.execute(
                "INSERT INTO duplicates VALUES (%s, %s, %s) ON CONFLICT (gateway, store) "
                "DO UPDATE SET count = duplicates.count + EXCLUDED.count", (gateway, store, count))

    def _status(self, status: Presence) -> None:
        moment = dt.datetime.fromtimestamp(status.time_ns / 1e9, dt.UTC)
        self.conn.execute(
            "INSERT INTO gateway_status (gateway, status, agent_version, config_sha256, time) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (gateway) DO UPDATE SET "
            "status = EXCLUDED.status, agent_version = EXCLUDED.agent_version, "
            "config_sha256 = EXCLUDED.config_sha256, time = EXCLUDED.time, received_at = now() "
            "WHERE gateway_status.time <= EXCLUDED.time",
            (status.gateway, status.status, status.agent_version, status.config_sha256, moment))


def json_text(data: dict[str, Any]) -> str:
    """`data` as JSON for a jsonb column. JSON has no NaN or infinity (PostgreSQL refuses the
    document, and with it the whole batch, for good): they become null; bytes become hex."""
    try:
        return json.dumps(data, allow_nan=False, default=_bytes_as_hex)
    except ValueError:
        return json.dumps(_finite(data), allow_nan=False, default=_bytes_as_hex)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _bytes_as_hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


def event_time(env: Envelope) -> dt.datetime:
    return dt.datetime.fromtimestamp(env.time_ns / 1e9, dt.UTC)
