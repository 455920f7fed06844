"""The fleet database: every event once, typed views of what a service team reads, the ledger.

`events` holds every event as the agent sent it (its data as `jsonb`), partitioned by
month of its time so that old months are dropped whole; `event_ids` is the idempotency
key (a resend carries the same id) and the completeness ledger's source: one row per
(gateway, store, seq) received. Views give the kinds their columns: `windows` (one row
per tag), `states`, `energy`, `episodes` (anomaly and limit), `device_health`,
`heartbeats`; `gateway_status` keeps each gateway's retained status message; `clocks` each
boot's reference for the events made before its clock was synchronized;
`config_pushes` each signed configuration `edge-fleet config push` published (its YAML
text, for the history and the diff of the fleet view). Statements are idempotent:
`migrate` runs them at every start.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg import sql

SCHEMA_VERSION = 1

DDL = """
CREATE TABLE IF NOT EXISTS fleet_meta (key text PRIMARY KEY, value text NOT NULL);

CREATE TABLE IF NOT EXISTS event_ids (
    id text PRIMARY KEY,
    gateway text NOT NULL,
    store text NOT NULL,
    seq bigint NOT NULL,
    time timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS event_ids_seq ON event_ids (gateway, store, seq);

CREATE TABLE IF NOT EXISTS duplicates (
    gateway text NOT NULL,
    store text NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (gateway, store)
);

CREATE TABLE IF NOT EXISTS rejected (
    received_at timestamptz NOT NULL DEFAULT now(),
    topic text NOT NULL,
    error text NOT NULL,
    payload bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS events (
    gateway text NOT NULL,
    seq bigint NOT NULL,
    id text NOT NULL,
    kind text NOT NULL,
    device text NOT NULL,
    time timestamptz NOT NULL,
    time_ns bigint NOT NULL,
    clock text NOT NULL,
    historical boolean NOT NULL,
    data jsonb NOT NULL,
    topic text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (time);
CREATE INDEX IF NOT EXISTS events_device_time ON events (gateway, device, kind, time);
-- An event made before its gateway's clock was synchronized, until corrected (fleet/clocks.py).
ALTER TABLE events ADD COLUMN IF NOT EXISTS mono_ns bigint;
ALTER TABLE events ADD COLUMN IF NOT EXISTS boot text;
CREATE INDEX IF NOT EXISTS events_unsynced ON events (gateway, boot) WHERE clock = 'unsynced';

CREATE TABLE IF NOT EXISTS clocks (
    gateway text NOT NULL,
    boot text NOT NULL,
    time_ns bigint NOT NULL,
    mono_ns bigint NOT NULL,
    PRIMARY KEY (gateway, boot)
);

CREATE TABLE IF NOT EXISTS gateway_status (
    gateway text PRIMARY KEY,
    status text NOT NULL,
    agent_version text NOT NULL,
    config_sha256 text NOT NULL,
    time timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- What `edge-fleet config push` published (once the broker acknowledged it); what the
-- gateway made of it comes back as events (config_applied, config_rejected, ...).
CREATE TABLE IF NOT EXISTS config_pushes (
    gateway text NOT NULL,
    version bigint NOT NULL,
    sha256 text NOT NULL,
    yaml text NOT NULL,
    key_id text NOT NULL,
    pushed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (gateway, version)
);
CREATE INDEX IF NOT EXISTS config_pushes_sha256 ON config_pushes (gateway, sha256);

CREATE OR REPLACE VIEW windows AS
SELECT e.gateway, e.device, e.seq, e.time,
       to_timestamp((e.data->>'start_ns')::bigint / 1e9) AS start_time,
       t.key AS tag, t.value->>'unit' AS unit,
       (t.value->>'n')::bigint AS n, (t.value->>'bad')::bigint AS bad,
       (t.value->>'min')::float8 AS min, (t.value->>'max')::float8 AS max,
       (t.value->>'mean')::float8 AS mean, (t.value->>'std')::float8 AS std,
       (t.value->>'last')::float8 AS last, (t.value->>'increase')::float8 AS increase,
       coalesce((e.data->>'windows')::int, 1) AS windows
FROM events e, jsonb_each(e.data->'tags') t
WHERE e.kind = 'window';

CREATE OR REPLACE VIEW states AS
SELECT gateway, device, seq, time, data->>'machine' AS machine, data->>'from' AS from_state,
       data->>'to' AS to_state, (data->>'dwell_s')::float8 AS dwell_s
FROM events WHERE kind = 'state';

CREATE OR REPLACE VIEW energy AS
SELECT gateway, device, seq, time, data->>'machine' AS machine, data->>'period' AS period,
       data->>'shift' AS shift, to_timestamp((data->>'start_ns')::bigint / 1e9) AS start_time,
       (data->>'complete')::boolean AS complete, (data->>'total_kwh')::float8 AS total_kwh,
       (data->>'idle_kwh')::float8 AS idle_kwh, data->'kwh' AS kwh_per_state,
       data->'hours' AS hours_per_state, (data->>'operating_h')::float8 AS operating_h,
       (data->>'starts')::int AS starts, (data->>'peak_demand_w')::float8 AS peak_demand_w
FROM events WHERE kind = 'energy';

CREATE OR REPLACE VIEW episodes AS
SELECT gateway, device, seq, time, kind, data->>'phase' AS phase, data->>'episode' AS episode,
       data->>'rule' AS rule, data->>'detector' AS detector,
       to_timestamp((data->>'start_ns')::bigint / 1e9) AS start_time,
       to_timestamp((data->>'end_ns')::bigint / 1e9) AS end_time,
       (data->>'duration_s')::float8 AS duration_s, (data->>'score')::float8 AS score,
       (data->>'threshold')::float8 AS threshold, (data->>'peak_value')::float8 AS peak_value,
       data->'tags' AS context
FROM events WHERE kind IN ('anomaly', 'limit');

CREATE OR REPLACE VIEW device_health AS
SELECT gateway, device, seq, time, data->>'status' AS status, data->>'reason' AS reason,
       data->>'detail' AS detail
FROM events WHERE kind = 'device_health';

CREATE OR REPLACE VIEW heartbeats AS
SELECT gateway, seq, time, data->>'version' AS agent_version,
       data->>'config_sha256' AS config_sha256, (data->>'uptime_s')::float8 AS uptime_s,
       (data->'store'->>'depth')::bigint AS store_depth, data->'devices' AS devices
FROM events WHERE kind = 'heartbeat';
"""


def migrate(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """Create what is missing; safe to run by several ingest processes at once."""
    with conn.transaction():
        # One process at a time: CREATE ... IF NOT EXISTS races with itself otherwise.
        conn.execute("SELECT pg_advisory_xact_lock(727001)")
        conn.execute(DDL)
        conn.execute("INSERT INTO fleet_meta VALUES ('schema', %s) ON CONFLICT (key) DO NOTHING",
                     (str(SCHEMA_VERSION),))


def month_partition(conn: psycopg.Connection[tuple[Any, ...]], moment: dt.datetime) -> str:
    """The partition of `events` holding `moment`'s month, created when missing."""
    first, following = month_bounds(moment)
    name = partition_name(first)
    # Two ingest processes may create the same month at once; IF NOT EXISTS alone races.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF events "
                         "FOR VALUES FROM ({}) TO ({})").format(
        sql.Identifier(name), sql.Literal(first), sql.Literal(following)))
    return name


def month_bounds(moment: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The first instant of `moment`'s month (UTC) and of the month after it."""
    first = moment.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return first, (first + dt.timedelta(days=32)).replace(day=1)


def partition_name(moment: dt.datetime) -> str:
    """`events_2026_12`: the partition of `events` for `moment`'s month (UTC)."""
    return f"events_{moment.astimezone(dt.UTC):%Y_%m}"
