"""OPC UA benchmark: data changes ingested per second, and CPU per 1,000 monitored items.

One server process (`load_server.py`: N variables, all changing every period) and, one after
the other in this process, two clients subscribed to every variable:

* **agent**: `OpcUaDriver.stream()` as the runtime consumes it (StatusCode to quality,
  source times, batches), the batches handed to nothing;
* **baseline**: a bare asyncua subscription whose handler counts `datachange_notification`
  calls (the least a Python client can do with the same notifications).

Both measure over the same window after a warm-up: changes received per second, and this
process's CPU seconds per wall second, scaled to 1,000 monitored items.

    python bench/opcua/run.py                # 1,000 items, 10 s per client
    python bench/opcua/run.py --quick        # a smoke run (seconds)

A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua.client.client import Client

from drivers.opcua import OpcUaDevice, OpcUaDriver
from drivers.samples import SampleBatch

HERE = Path(__file__).resolve().parent


@dataclass
class Result:
    name: str
    changes: int
    wall_s: float
    cpu_s: float
    items: int

    @property
    def per_s(self) -> float:
        return self.changes / self.wall_s

    @property
    def cpu_per_1000(self) -> float:
        """CPU seconds per wall second (1.0 = one core busy), per 1,000 monitored items."""
        return self.cpu_s / self.wall_s * 1000 / self.items


async def measure(name: str, items: int, warmup_s: float, duration_s: float,
                  start: Callable[[Callable[[int], None]], Awaitable[Callable[[], Awaitable[None]]]],
                  ) -> Result:
    counted = [0]

    def count(n: int) -> None:
        counted[0] += n

    stop = await start(count)
    await asyncio.sleep(warmup_s)
    c0, t0, p0 = counted[0], time.monotonic(), time.process_time()
    await asyncio.sleep(duration_s)
    c1, t1, p1 = counted[0], time.monotonic(), time.process_time()
    await stop()
    return Result(name, c1 - c0, t1 - t0, p1 - p0, items)


def agent_client(endpoint: str, nodes: list[str], publishing_s: float) -> Any:
    async def start(count: Callable[[int], None]) -> Callable[[], Awaitable[None]]:
        config = OpcUaDevice.model_validate({
            "name": "bench", "protocol": "opcua", "endpoint": endpoint, "timeout_s": 10,
            "publishing_interval_s": publishing_s,
            "tags": [{"name": f"v{i}", "node": n, "sampling_interval_s": 0, "queue_size": 10}
                     for i, n in enumerate(nodes)]})
        driver = OpcUaDriver(config, Path(tempfile.mkdtemp()))
        await driver.connect()

        async def consume() -> None:
            async for item in driver.stream():
                if isinstance(item, SampleBatch):
                    count(len(item.tags))

        task = asyncio.create_task(consume())

        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await driver.close()
        return stop
    return start


def baseline_client(endpoint: str, nodes: list[str], publishing_s: float) -> Any:
    async def start(count: Callable[[int], None]) -> Callable[[], Awaitable[None]]:
        client = Client(endpoint, timeout=10)
        await client.connect()

        class Handler:
            def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
                count(1)

        sub = await client.create_subscription(publishing_s * 1000, Handler())
        await sub.subscribe_data_change([client.get_node(n) for n in nodes], queuesize=10,
                                        sampling_interval=0)

        async def stop() -> None:
            await client.disconnect()
        return stop
    return start


def report(results: list[Result], items: int, period_s: float) -> list[str]:
    agent, base = results
    offered = items / period_s
    title = (f"# OPC UA ingestion ({items} monitored items, each changing every "
             f"{period_s:g} s: {offered:,.0f} changes/s offered)")
    machine = (f"python {platform.python_version()}, {platform.machine()}, "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    ratio = (f"| ratio agent / baseline | {agent.per_s / base.per_s:.2f} | "
             f"{agent.cpu_per_1000 / base.cpu_per_1000:.2f} |")
    return [
        title,
        "",
        machine,
        "",
        "| client | changes/s ingested | CPU (cores) per 1,000 items |",
        "|---|---|---|",
        f"| agent (`OpcUaDriver.stream`) | {agent.per_s:,.0f} | {agent.cpu_per_1000:.3f} |",
        f"| baseline (bare asyncua handler) | {base.per_s:,.0f} | {base.cpu_per_1000:.3f} |",
        ratio,
    ]


async def run(args: argparse.Namespace, endpoint: str, nodes: list[str]) -> list[str]:
    results = []
    for name, factory in (("agent", agent_client), ("baseline", baseline_client)):
        results.append(await measure(name, args.items, args.warmup_s, args.duration_s,
                                     factory(endpoint, nodes, args.publishing_s)))
    return report(results, args.items, args.period_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--period-s", type=float, default=0.5,
                        help="every variable changes this often (default 0.5)")
    parser.add_argument("--publishing-s", type=float, default=0.1)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="100 items, 2 s per client")
    parser.add_argument("--output", type=Path, help="also write the report there")
    args = parser.parse_args()
    if args.quick:
        args.items, args.duration_s, args.warmup_s = 100, 2.0, 1.0
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    server = subprocess.Popen(
        [sys.executable, str(HERE / "load_server.py"), "--items", str(args.items),
         "--period-s", str(args.period_s)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        lines = asyncio.run(run(args, info["endpoint"], info["nodes"]))
    finally:
        server.terminate()
        server.wait(timeout=10)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
