"""The true time of events a gateway made before its clock was synchronized.

Such an event arrives with `clock: unsynced`, its monotonic time (`mono`) and its boot;
once NTP has set the clock the agent sends a `clock` event (`t` right, `mono` then), and
every event of that boot is at `t_clock + (mono - mono_clock)`. The agent corrects what it
still holds before sending it; what it had already sent is corrected here, whether the
`clock` event comes before the event (at insert) or after it (the stored rows are updated).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from agent.events import CLOCK, SCHEMA_VERSION, Envelope, corrected

Clock = tuple[int, int]
"""A boot's reference: the UTC nanoseconds and the monotonic nanoseconds of one moment."""


def clock_of(env: Envelope) -> tuple[tuple[str, str], Clock] | None:
    """(gateway, boot) and its reference, for a `clock` event."""
    boot, mono = env.data.get("boot"), env.data.get("mono")
    if env.kind != CLOCK or not isinstance(boot, str) or not isinstance(mono, int):
        return None
    return (env.gateway, boot), (env.time_ns, mono)


def true_time(env: Envelope, clock: Clock) -> Envelope:
    """`env` at its true time, if it is an unsynced event (else as it is)."""
    if env.clock != "unsynced" or env.mono_ns is None:
        return env
    time_ns, mono_ns = clock
    return corrected(env, time_ns + env.mono_ns - mono_ns)


def known_clocks(conn: psycopg.Connection[tuple[Any, ...]],
                 keys: set[tuple[str, str]]) -> dict[tuple[str, str], Clock]:
    """The stored references of these (gateway, boot)s."""
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT gateway, boot, time_ns, mono_ns FROM clocks "
        "WHERE (gateway, boot) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
    return {(str(g), str(b)): (int(t), int(m)) for g, b, t, m in rows}


def stored_unsynced(conn: psycopg.Connection[tuple[Any, ...]], gateway: str,
                    boot: str) -> list[Envelope]:
    """The events of that boot stored with their unsynced time."""
    rows = conn.execute(
        "SELECT seq, id, kind, device, time_ns, data, mono_ns FROM events "
        "WHERE gateway = %s AND boot = %s AND clock = 'unsynced'", (gateway, boot)).fetchall()
    return [Envelope(version=SCHEMA_VERSION, gateway=gateway, seq=int(seq), id=str(id_),
                     kind=str(kind), device=str(device), time_ns=int(time_ns), data=dict(data),
                     clock="unsynced", mono_ns=int(mono), boot=boot)
            for seq, id_, kind, device, time_ns, data, mono in rows]


def save_corrected(conn: psycopg.Connection[tuple[Any, ...]], env: Envelope) -> None:
    """A stored unsynced event set to its true time (the row moves to its month's partition,
    which the caller made sure exists)."""
    moment = dt.datetime.fromtimestamp(env.time_ns / 1e9, dt.UTC)
    conn.execute("UPDATE events SET time = %s, time_ns = %s, clock = %s, data = %s "
                 "WHERE id = %s", (moment, env.time_ns, env.clock, Jsonb(env.data), env.id))
    conn.execute("UPDATE event_ids SET time = %s WHERE id = %s", (moment, env.id))
