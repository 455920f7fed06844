"""What runs on the lazy disk until the power is cut: an EventStore (and its uplink when a
broker port is given) as the runtime wires them, fed events as fast as a busy gateway.

python worker.py DB SPOOL_DIR BROKER_PORT(0: no uplink) MAX_BYTES(0: none) FIRST_N RECORD
ALARM_EVERY OUTAGE_COMMIT_S
Every put carries an `anomaly` event (every ALARM_EVERY-th put only; the rest windows and
samples, which a store whose uplink finds no broker commits every OUTAGE_COMMIT_S) with `n`
(from FIRST_N on); after each `put` the line `n mono_s` is appended to RECORD (on a real disk, unbuffered), so the test knows what was made even
after the SIGKILL that follows the power cut. `opening` is written before the store opens
(migrates), `ready` once it is open.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from agent.events import ANOMALY, SAMPLES, WINDOW, Event
from agent.store import EventStore

COMMIT_INTERVAL_S = 0.05
PUT_EVERY_S = 0.005


async def main() -> None:
    db, spool, port, max_bytes, first_n, record, alarm_every, outage_s = sys.argv[1:9]
    out = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(out, b"opening\n")
    store = await EventStore.open(
        Path(db), "gw", commit_interval_s=COMMIT_INTERVAL_S, spool_dir=Path(spool),
        max_bytes=int(max_bytes) or None, report_interval_s=0.2,
        outage_commit_interval_s=float(outage_s))
    tasks = [asyncio.create_task(store.writer())]
    if int(port):
        from agent.config.models import GatewayConfig, MqttConfig
        from agent.uplink.client import MqttUplink

        config = MqttConfig.model_validate({"host": "127.0.0.1", "port": int(port),
                                            "tls": {"enabled": False}, "replay_after_s": 0,
                                            "replay_rate_per_s": 100_000})
        uplink = MqttUplink(config, GatewayConfig(id="gw", site="s"), store)
        tasks.append(asyncio.create_task(uplink.run()))
    os.write(out, b"ready\n")
    n = int(first_n)
    tags = {f"t{k}": {"n": 5, "bad": 0, "unit": "", "min": 1.0, "max": 2.0, "mean": 1.5,
                      "std": 0.5, "last": 2.0} for k in range(8)}
    while True:
        now_ns = time.time_ns()
        events = [Event(WINDOW, "m1", now_ns, {"start_ns": now_ns - 1, "end_ns": now_ns,
                                               "tags": tags}),
                  Event(WINDOW, "m2", now_ns, {"start_ns": now_ns - 1, "end_ns": now_ns,
                                               "tags": tags})]
        alarm = n % int(alarm_every) == 0
        if alarm:
            events.insert(0, Event(ANOMALY, "m1", now_ns, {"n": n}))
        if n % 4 == 0:
            events.append(Event(SAMPLES, "m1", now_ns, {"v": [float(n)] * 200}))
        store.put(events)
        if alarm:
            os.write(out, f"{n} {time.monotonic()}\n".encode())
        n += 1
        await asyncio.sleep(PUT_EVERY_S)


if __name__ == "__main__":
    asyncio.run(main())
