"""Drain a stored backlog to a broker through `MqttUplink`, in a process of its own, and report
(JSON lines on stdout) the time it took and the resident memory on the way.

Run by run.py; a process of its own so that its memory is the uplink's and the store's
only, not that of whatever filled the backlog. `python drain.py STORE HOST PORT EVENTS`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from workload import GATEWAY, status_kb

from agent.config.models import GatewayConfig, MqttConfig
from agent.service.logs import configure_logging
from agent.store import EventStore
from agent.uplink.client import MqttUplink

MILESTONES = (0.25, 0.5, 0.75)


class CountingStore(EventStore):
    """The agent's store, counting the broker's acknowledgements as the uplink reports them."""

    acknowledged = 0

    def ack(self, *seqs: int) -> None:
        super().ack(*seqs)
        self.acknowledged += len(seqs)


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def uplink_config(host: str, port: int) -> MqttConfig:
    settings: dict[str, object] = {"host": host, "port": port, "tls": {"enabled": False}}
    # A backlog is replayed at `replay_rate_per_s` (200/s by default) by design; the
    # benchmark wants what the uplink can do, so it lifts the cap to its maximum.
    rate = MqttConfig.model_fields.get("replay_rate_per_s")
    if rate is not None:
        settings["replay_rate_per_s"] = next(m.le for m in rate.metadata if hasattr(m, "le"))
    return MqttConfig.model_validate(settings)


async def drain(path: Path, host: str, port: int, expected: int) -> None:
    store = await CountingStore.open(path, GATEWAY)
    assert isinstance(store, CountingStore)
    depth = await store.depth()
    if depth != expected:
        raise SystemExit(f"{path} holds {depth} events, expected {expected}")
    config = uplink_config(host, port)
    report(phase="ready", rss_kb=status_kb("VmRSS"), max_inflight=config.max_inflight,
           replay_rate_per_s=getattr(config, "replay_rate_per_s", None))
    uplink = MqttUplink(config, GatewayConfig(id=GATEWAY), store)
    started = time.perf_counter()
    tasks = [asyncio.create_task(store.writer()), asyncio.create_task(uplink.run())]
    pending = list(MILESTONES)
    while store.acknowledged < expected:
        if any(t.done() for t in tasks):
            for task in tasks:
                task.result()  # raises what stopped it
        done = store.acknowledged / expected
        while pending and done >= pending[0]:
            report(phase="draining", share=pending.pop(0), rss_kb=status_kb("VmRSS"))
        await asyncio.sleep(0.02)
    seconds = time.perf_counter() - started
    report(phase="drained", events=store.acknowledged, seconds=seconds,
           rss_kb=status_kb("VmRSS"), peak_rss_kb=status_kb("VmHWM"))
    for task in tasks:
        task.cancel()
    await uplink.close()
    await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("store", type=Path)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("events", type=int)
    args = parser.parse_args()
    configure_logging("warning", stream=sys.stderr)
    asyncio.run(drain(args.store, args.host, args.port, args.events))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
