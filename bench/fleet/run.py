"""bench/fleet: the fleet side's ingest under load, against a bare COPY loop of the same run.

A load generator publishes real agent events (msgpack, `agent.events.encode`) of N
simulated gateways, the mix of the reference workload (window, change, state, energy,
heartbeat), at QoS 1 into a Mosquitto of its own; `edge-fleet ingest` processes (1, then 2
on one shared subscription) commit them into a PostgreSQL of its own. Measured: events/s
from the first publish to the last row committed; broker -> committed row p50/p99 at a
steady rate below capacity (row `received_at` minus the event's `t`, set at publish);
database bytes per event and per gateway-day at the reference workload's 13,970 payload
bytes/s per gateway (bench/results/system.md); and the same events written by a bare
psycopg `COPY` loop (decode, COPY, no broker, no ids), the limit of this machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.events import Event, decode, encode
from agent.testing import Mosquitto, console_script, stop_process, wait_until
from agent.testing.machine import describe_machine
from agent.testing.postgres import Postgres

REFERENCE_PAYLOAD_BYTES_PER_S = 13_970
"""One gateway on the reference workload (bench/results/system.md, the agent's column)."""
S = 1_000_000_000


def event_mix(gateway: str, seq: int, now_ns: int) -> tuple[str, bytes]:
    """The n-th event of a gateway: mostly change events, a window every 20th, a state every
    50th, an energy report and a heartbeat every 500th, as a site's agent sends them."""
    device = f"machine-{seq % 4}"
    if seq % 500 == 0:
        kind, data = "heartbeat", {"reason": "periodic", "uptime_s": seq * 1.0,
                                   "version": "0.1.0", "config_sha256": "ab" * 32,
                                   "devices": {f"machine-{i}": {"status": "up", "reason": ""}
                                               for i in range(4)},
                                   "store": {"id": f"{gateway}-store", "depth": 0,
                                             "last_seq": seq}}
        device = "_gateway"
    elif seq % 500 == 1:
        kind, data = "energy", {"machine": "m", "period": "interval", "start_ns": now_ns,
                                "end_ns": now_ns, "complete": True, "total_kwh": 1.5,
                                "idle_kwh": 0.2, "kwh": {"off": 0.0, "idle": 0.2,
                                                         "running": 1.3, "overload": 0.0},
                                "hours": {"off": 0.1, "idle": 0.05, "running": 0.1,
                                          "overload": 0.0}, "starts": 2, "peak_demand_w": 7400.0}
    elif seq % 50 == 0:
        kind, data = "state", {"machine": "m", "from": "idle", "to": "running", "dwell_s": 12.5}
    elif seq % 20 == 0:
        kind, data = "window", {"start_ns": now_ns - 60 * S, "end_ns": now_ns, "tags": {
            f"f{i:02d}": {"n": 60, "bad": 0, "unit": "W", "min": 1.0 * i, "max": 2.0 * i,
                          "mean": 1.5 * i, "std": 0.3, "last": 1.7 * i} for i in range(12)}}
    else:
        kind, data = "change", {"tags": {"stamp_ms": {"value": float(seq), "previous": seq - 1.0,
                                                      "unit": ""}}}
    payload = encode(Event(kind, device, now_ns, data), gateway=gateway, seq=seq)
    return f"bench/{gateway}/{device}/{kind}", payload


def publish(port: int, gateways: list[str], per_gateway: int, rate_per_s: float | None,
            done: Any) -> None:
    """Publish `per_gateway` events of each gateway at QoS 1 (as fast as the broker takes
    them, or at `rate_per_s`); each event's `t` is its publish time."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(5000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.monotonic()
    sent = 0
    for seq in range(1, per_gateway + 1):
        for gateway in gateways:
            topic, payload = event_mix(gateway, seq, time.time_ns())
            info = client.publish(topic, payload, qos=1)
            while info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # pragma: no cover - backpressure
                time.sleep(0.001)
                info = client.publish(topic, payload, qos=1)
            sent += 1
            if rate_per_s is not None:
                ahead = sent / rate_per_s - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    while client.want_write() or client._out_messages:  # until the broker has every one
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()
    done.set()


def count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM event_ids").fetchone()
    return int(row[0]) if row else 0


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def start_ingests(work: Path, broker: Mosquitto, dsn: str, phase: str, processes: int,
                  ) -> list[subprocess.Popen[bytes]]:
    """`processes` ingest processes of one phase, each with its client id (and session)."""
    ingests = []
    for i in range(processes):
        log = open(work / f"{phase}-{i}.log", "a")  # noqa: SIM115
        ingests.append(subprocess.Popen(
            [console_script("edge-fleet"), "--log-level", "info", "ingest", "-c",
             str(_config(work, broker, dsn, f"{phase}-{i}"))], stderr=log))
    wait_until(lambda: all("fleet_mqtt_connected" in (work / f"{phase}-{i}.log").read_text()
                           for i in range(processes)), timeout_s=60, what="ingests connected")
    time.sleep(1.0)  # the SUBACK after the CONNACK
    return ingests


def run_ingest(work: Path, broker: Mosquitto, dsn: str, phase: str, processes: int,
               gateways: int, per_gateway: int, rate_per_s: float | None, publishers: int = 2,
               backlog: bool = False) -> dict[str, float]:
    """One phase: live (the ingests run while the publishers publish: both share the CPUs)
    or from a backlog (published while the ingests are stopped, timed from their start).
    Each phase's processes have client ids of their own: a session of an earlier phase,
    persistent and offline, would still take its share of the group."""
    reset(dsn)
    subprocess.run([console_script("edge-fleet"), "migrate", "-c",
                    str(_config(work, broker, dsn, f"{phase}-0"))], check=True,
                   capture_output=True)
    for i in range(processes):
        (work / f"{phase}-{i}.log").write_text("")
    ingests = start_ingests(work, broker, dsn, phase, processes)
    if backlog:  # the sessions exist; the broker queues for them while they are away
        for process in ingests:
            stop_process(process)
    names = [f"gw-{i:04d}" for i in range(gateways)]
    total = gateways * per_gateway
    done = [mp.Event() for _ in range(publishers)]
    pubs = [mp.Process(target=publish, args=(broker.port, names[k::publishers], per_gateway,
                                             rate_per_s / publishers if rate_per_s else None,
                                             done[k])) for k in range(publishers)]
    start = time.monotonic()
    for p in pubs:
        p.start()
    if backlog:
        for p in pubs:
            p.join(timeout=600)
        start = time.monotonic()
        ingests = start_ingests(work, broker, dsn, phase, processes)
    wait_until(lambda: count(dsn) >= total, timeout_s=600, what=f"{total} events committed")
    elapsed = time.monotonic() - start
    for p in pubs:
        p.join(timeout=30)
    for process in ingests:
        stop_process(process)
    for i in range(processes):  # out of the group: the next phase's processes take it all
        subprocess.run([console_script("edge-fleet"), "leave", "-c",
                        str(_config(work, broker, dsn, f"{phase}-{i}"))], check=True,
                       capture_output=True)
    with psycopg.connect(dsn) as conn:
        latency = [float(r[0]) for r in conn.execute(
            "SELECT extract(epoch FROM e.received_at) * 1000 - e.time_ns / 1e6 "
            "FROM events e").fetchall()]
        size = conn.execute("SELECT pg_total_relation_size('events') + "
                            "sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN "
                            "pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = "
                            "'events'::regclass").fetchone()
        ids = conn.execute("SELECT pg_total_relation_size('event_ids')").fetchone()
        stored = conn.execute("SELECT count(*), sum(length(data::text)) FROM events").fetchone()
    db_bytes = float((size[0] if size else 0) or 0) + float((ids[0] if ids else 0) or 0)
    latency.sort()
    return {"events": float(total), "elapsed_s": elapsed, "events_per_s": total / elapsed,
            "p50_ms": statistics.median(latency), "p99_ms": latency[int(0.99 * len(latency))],
            "db_bytes_per_event": db_bytes / max(int(stored[0]) if stored else 1, 1)}


def bare_copy(dsn: str, gateways: int, per_gateway: int) -> float:
    """Events/s of decode + COPY into the `events` table alone, no broker: the limit."""
    reset(dsn)
    payloads = [event_mix(f"gw-{g:04d}", seq, time.time_ns())
                for seq in range(1, per_gateway + 1) for g in range(gateways)]
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE bare (gateway text, seq bigint, id text, kind text, "
                     "device text, time timestamptz, time_ns bigint, clock text, "
                     "historical boolean, data jsonb, topic text)")
        conn.commit()
        start = time.monotonic()
        for i in range(0, len(payloads), 1000):
            with conn.cursor() as cur, cur.copy("COPY bare FROM STDIN") as copy:
                for topic, payload in payloads[i:i + 1000]:
                    env = decode(payload)
                    copy.write_row((env.gateway, env.seq, env.id, env.kind, env.device,
                                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
                                        env.time_ns / 1e9)), env.time_ns, env.clock,
                                    env.historical, Jsonb(env.data), topic))
            conn.commit()
        return len(payloads) / (time.monotonic() - start)


def _config(work: Path, broker: Mosquitto, dsn: str, client_id: str) -> Path:
    path = work / f"{client_id}.yaml"
    path.write_text(f"mqtt: {{host: 127.0.0.1, port: {broker.port}, tls: false, "
                    f"client_id: {client_id}, topic: 'bench/+/+/+'}}\n"
                    f'database: {{dsn: "{dsn}"}}\n')
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--events-per-gateway", type=int, default=1000)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    work = ROOT / "bench" / ".cache" / "fleet"
    work.mkdir(parents=True, exist_ok=True)
    broker_config = ("max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
                     "max_keepalive 600\n")
    g, n = args.gateways, args.events_per_gateway
    with Postgres() as pg, Mosquitto(extra_config=broker_config) as broker:
        copy_rate = bare_copy(pg.dsn, g, n)
        one = run_ingest(work, broker, pg.dsn, "one", 1, g, n, None)
        two = run_ingest(work, broker, pg.dsn, "two", 2, g, n, None)
        one_b = run_ingest(work, broker, pg.dsn, "one-b", 1, g, n, None, backlog=True)
        two_b = run_ingest(work, broker, pg.dsn, "two-b", 2, g, n, None, backlog=True)
        steady = run_ingest(work, broker, pg.dsn, "steady", 1, g, max(n // 5, 50), 1000.0)
    mean_payload = statistics.mean(len(event_mix("gw-0000", s, 0)[1]) for s in range(1, 1001))
    per_day = REFERENCE_PAYLOAD_BYTES_PER_S / mean_payload * 86400
    rows = [
        ("events/s, 1 ingest process (publish to last commit)", f"{one['events_per_s']:,.0f}"),
        ("events/s, 2 processes, one shared subscription", f"{two['events_per_s']:,.0f}"),
        ("2 processes / 1", f"{two['events_per_s'] / one['events_per_s']:.2f}"),
        ("events/s, 1 process draining a backlog (from its start)",
         f"{one_b['events_per_s']:,.0f}"),
        ("events/s, 2 processes draining a backlog", f"{two_b['events_per_s']:,.0f}"),
        ("2 processes / 1, backlog", f"{two_b['events_per_s'] / one_b['events_per_s']:.2f}"),
        ("events/s, bare psycopg COPY loop (decode + COPY, no broker)", f"{copy_rate:,.0f}"),
        ("1 process / bare COPY, live", f"{one['events_per_s'] / copy_rate:.2f}"),
        ("1 process / bare COPY, backlog", f"{one_b['events_per_s'] / copy_rate:.2f}"),
        ("broker -> committed row p50 / p99 ms at 1,000 events/s",
         f"{steady['p50_ms']:.0f} / {steady['p99_ms']:.0f}"),
        ("database bytes per event (events + event_ids, with indexes)",
         f"{one['db_bytes_per_event']:,.0f}"),
        ("database MB per gateway-day at the reference workload",
         f"{one['db_bytes_per_event'] * per_day / 1e6:,.0f}"),
    ]
    text = (f"# bench/fleet\n\n{g} gateways x {n} events ({g * n:,} events of the reference "
            f"mix, mean payload {mean_payload:.0f} B, {per_day:,.0f} events per gateway-day "
            f"at {REFERENCE_PAYLOAD_BYTES_PER_S:,} B/s); Mosquitto, PostgreSQL, the ingest "
            "and 2 publisher processes all on this machine. Live: the ingests run while "
            "the publishers publish (all share the CPUs); backlog: published while the "
            "ingests are stopped, timed from their start.\n\n"
            "| measure | value |\n|---|---:|\n"
            + "".join(f"| {a} | {b} |\n" for a, b in rows)
            + f"\n{describe_machine()}\n")
    print(text)
    if args.output:
        args.output.write_text(text)
    (work / "last.json").write_text(json.dumps(
        {"one": one, "two": two, "one_backlog": one_b, "two_backlog": two_b,
         "steady": steady, "copy": copy_rate}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
