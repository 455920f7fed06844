"""What the fleet view reads from the database: the fleet, a gateway, a machine.

Plain async functions over one connection, each returning plain rows for a template; the
figures a service team asks for (energy per state per day and per shift, idle share,
usage hours, starts, peak demand) are summed here from the agent's `energy` reports.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

STATES = ("off", "idle", "running", "overload")


@dataclass
class GatewayRow:
    gateway: str
    status: str
    """`online`, `offline` (its will, or a clean stop), `silent` (online by its status, but
    nothing heard for three heartbeat intervals: a link or a broker that lost it) or
    `unknown` (no status message)."""
    agent_version: str
    config_sha256: str
    last_heard: dt.datetime | None
    store_depth: int | None
    devices_up: int
    devices: int
    bytes_written_per_day: float | None


SILENT_AFTER_BEATS = 3
"""An online gateway is `silent` once nothing arrived for this many heartbeat intervals..."""
SILENT_AFTER_MIN = dt.timedelta(minutes=3)
"""... and at least this long (the interval is the time between its last two heartbeats)."""
DEFAULT_BEAT = dt.timedelta(seconds=60)


def judged(status: str, last_heard: dt.datetime | None, beats: list[dt.datetime] | None,
           now: dt.datetime) -> str:
    """The status a gateway's retained message gives, unless its silence says otherwise."""
    if status != "online" or last_heard is None:
        return status
    every = beats[0] - beats[1] if beats and len(beats) == 2 else DEFAULT_BEAT
    return "silent" if now - last_heard > max(SILENT_AFTER_BEATS * every,
                                              SILENT_AFTER_MIN) else status


async def fleet(conn: Conn, now: dt.datetime) -> list[GatewayRow]:
    rows = await (await conn.execute("""
        WITH last_beat AS (
            SELECT DISTINCT ON (gateway) gateway, time, data FROM events
            WHERE kind = 'heartbeat' ORDER BY gateway, time DESC),
        heard AS (SELECT gateway, max(received_at) AS at FROM event_ids GROUP BY gateway)
        SELECT g.gateway, coalesce(s.status, 'unknown'),
               coalesce(s.agent_version, b.data->>'version', ''),
               coalesce(s.config_sha256, b.data->>'config_sha256', ''), h.at,
               (b.data->'store'->>'depth')::bigint, b.data->'devices',
               (b.data->'store'->>'bytes_written_per_day')::float8,
               (SELECT array_agg(time ORDER BY time DESC) FROM (
                   SELECT time FROM events e WHERE e.gateway = g.gateway
                   AND e.device = '_gateway' AND e.kind = 'heartbeat'
                   ORDER BY time DESC LIMIT 2) last_two)
        FROM (SELECT gateway FROM heard UNION SELECT gateway FROM gateway_status) g
        LEFT JOIN gateway_status s USING (gateway)
        LEFT JOIN last_beat b USING (gateway)
        LEFT JOIN heard h USING (gateway)
        ORDER BY g.gateway""")).fetchall()
    out = []
    for gw, status, version, sha, heard, depth, devices, written, beats in rows:
        devices = devices or {}
        up = sum(1 for d in devices.values() if d.get("status") == "up")
        out.append(GatewayRow(gw, judged(status, heard, beats, now), version, sha, heard, depth,
                              up, len(devices), written))
    return out


@dataclass
class DeviceRow:
    device: str
    status: str
    reason: str
    detail: str
    since: dt.datetime | None
    machines: list[str] = field(default_factory=list)


async def devices(conn: Conn, gateway: str) -> list[DeviceRow]:
    """Each device's latest health (the heartbeat names those that never changed)."""
    health = await (await conn.execute(
        "SELECT DISTINCT ON (device) device, status, reason, detail, time FROM device_health "
        "WHERE gateway = %s ORDER BY device, time DESC", (gateway,))).fetchall()
    rows = {str(d): DeviceRow(str(d), str(s), str(r or ""), str(x or ""), t)
            for d, s, r, x, t in health}
    beat = await (await conn.execute(
        "SELECT data->'devices' FROM events WHERE kind = 'heartbeat' AND gateway = %s "
        "ORDER BY time DESC LIMIT 1", (gateway,))).fetchone()
    for name, state in ((beat[0] if beat else None) or {}).items():
        rows.setdefault(name, DeviceRow(name, state.get("status", ""), state.get("reason", ""),
                                        "", None))
    for device, machine in await (await conn.execute(
            "SELECT DISTINCT device, machine FROM states WHERE gateway = %s",
            (gateway,))).fetchall():
        if str(device) in rows:
            rows[str(device)].machines.append(str(machine))
    return [rows[k] for k in sorted(rows)]


@dataclass
class Segment:
    state: str
    start: dt.datetime
    end: dt.datetime


async def state_segments(conn: Conn, gateway: str, device: str, start: dt.datetime,
                         end: dt.datetime) -> list[Segment]:
    """The machine's states over the span, from its `state` events (the one in force at the
    start included)."""
    rows = await (await conn.execute(
        "(SELECT time, to_state FROM states WHERE gateway = %s AND device = %s AND time < %s "
        " ORDER BY time DESC LIMIT 1) UNION ALL "
        "(SELECT time, to_state FROM states WHERE gateway = %s AND device = %s "
        " AND time >= %s AND time < %s ORDER BY time)",
        (gateway, device, start, gateway, device, start, end))).fetchall()
    rows.sort(key=lambda r: r[0])
    segments = []
    for i, (at, state) in enumerate(rows):
        until = rows[i + 1][0] if i + 1 < len(rows) else end
        begin = max(at, start)
        if until > begin:
            segments.append(Segment(str(state), begin, min(until, end)))
    return segments


@dataclass
class EnergyRow:
    """A day's or a shift's figures of one machine."""

    label: str
    kwh: dict[str, float]
    hours: dict[str, float]
    starts: int
    peak_demand_w: float | None

    @property
    def total_kwh(self) -> float:
        return sum(self.kwh.values())

    @property
    def operating_h(self) -> float:
        return sum(h for state, h in self.hours.items() if state != "off")

    @property
    def idle_share(self) -> float | None:
        """Idle hours over hours with the motor on: the waste a service team sells savings on."""
        return self.hours.get("idle", 0.0) / self.operating_h if self.operating_h else None


async def energy(conn: Conn, gateway: str, device: str, start: dt.datetime, end: dt.datetime,
                 by: str = "day") -> list[EnergyRow]:
    """Interval reports summed per UTC day (`by="day"`), or the agent's shift reports."""
    period = "shift" if by == "shift" else "interval"
    rows = await (await conn.execute(
        "SELECT time, shift, kwh_per_state, hours_per_state, starts, peak_demand_w FROM energy "
        "WHERE gateway = %s AND device = %s AND period = %s AND time >= %s AND time < %s "
        "ORDER BY time", (gateway, device, period, start, end))).fetchall()
    grouped: dict[str, EnergyRow] = {}
    for time, shift, kwh, hours, starts, peak in rows:
        label = (f"{time:%Y-%m-%d} shift {shift}" if by == "shift" else f"{time:%Y-%m-%d}")
        row = grouped.setdefault(label, EnergyRow(label, defaultdict(float),
                                                  defaultdict(float), 0, None))
        for state, value in (kwh or {}).items():
            if value is not None:
                row.kwh[state] += float(value)
        for state, value in (hours or {}).items():
            row.hours[state] += float(value or 0.0)
        row.starts += int(starts or 0)
        if peak is not None:
            row.peak_demand_w = max(row.peak_demand_w or 0.0, float(peak))
    return list(grouped.values())


async def tags(conn: Conn, gateway: str, device: str) -> list[str]:
    rows = await (await conn.execute(
        "SELECT DISTINCT tag FROM windows WHERE gateway = %s AND device = %s ORDER BY tag",
        (gateway, device))).fetchall()
    return [str(r[0]) for r in rows]


@dataclass
class Point:
    time: dt.datetime
    mean: float
    low: float
    high: float


async def series(conn: Conn, gateway: str, device: str, tag: str, start: dt.datetime,
                 end: dt.datetime) -> tuple[list[Point], str]:
    """The tag's windows over the span (mean, min, max) and its unit."""
    rows = await (await conn.execute(
        "SELECT time, mean, min, max, unit FROM windows WHERE gateway = %s AND device = %s "
        "AND tag = %s AND time >= %s AND time < %s AND n > 0 ORDER BY time",
        (gateway, device, tag, start, end))).fetchall()
    unit = str(rows[-1][4] or "") if rows else ""
    return [Point(t, float(m), float(lo), float(hi)) for t, m, lo, hi, _ in rows], unit


@dataclass
class EpisodeRow:
    kind: str
    rule: str
    detector: str
    start: dt.datetime | None
    end: dt.datetime | None
    duration_s: float | None
    score: float | None
    peak_value: float | None
    context: dict[str, Any]


async def episodes(conn: Conn, gateway: str, device: str, start: dt.datetime,
                   end: dt.datetime) -> list[EpisodeRow]:
    """Each episode once: its end when it has one, else its start (still running)."""
    rows = await (await conn.execute(
        "SELECT DISTINCT ON (episode) kind, rule, detector, start_time, end_time, duration_s, "
        "score, peak_value, context FROM episodes WHERE gateway = %s AND device = %s "
        "AND time >= %s AND time < %s ORDER BY episode, (phase = 'end') DESC",
        (gateway, device, start, end))).fetchall()
    out = [EpisodeRow(str(k), str(r), str(d), s, e, du, sc, pv, c or {})
           for k, r, d, s, e, du, sc, pv, c in rows]
    out.sort(key=lambda e: e.start or start, reverse=True)
    return out
