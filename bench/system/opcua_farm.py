"""Many simulated OPC UA servers in one process: the OPC UA side of the system benchmark.

    python bench/system/opcua_farm.py --names opc-001,opc-002 --items 200 --period-s 0.1

One `plc_sim` `OpcUaSimServer` per server, each on a port of its own (a free one), serving
`--items` Double variables `ns=2;s=<server>.v001`... that all change every `--period-s`
(as bench/opcua/load_server.py does for its own benchmark). Prints one JSON line when every
server listens: `{"event": "listening", "ports": [...]}`. On SIGUSR1 it prints
`{"event": "served", "samples": S}`: the value changes it has made so far (items times
ticks, over every server). A change made is not a change delivered: a client's sampling
interval and queue decide what it gets; the benchmark counts what the agent ingested
separately (its `window` events). When the process cannot keep up with the ticks (one
Python process, the variables written one by one), it makes fewer changes, and says so
in that count. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import signal
import sys
import time

import structlog
from workload import item_name

from plc_sim.opcua_server import OpcUaSimServer


class SyntheticServer:
    """The live values of one server: sines that differ at every tick, counted per call."""

    changes = 0
    """Value changes made by every server of the farm so far."""

    def __init__(self, index: int, items: int) -> None:
        self.index = index
        self.names = [item_name(number) for number in range(items)]

    def readings(self) -> dict[str, float]:
        now = time.monotonic()
        SyntheticServer.changes += len(self.names)
        return {name: 100.0 * number + 10.0 * math.sin(2 * math.pi * now / (5.0 + number))
                for number, name in enumerate(self.names)}


def say(**line: object) -> None:
    print(json.dumps(line), flush=True)


async def serve(names: list[str], items: int, period_s: float) -> None:
    farm = [SyntheticServer(index, items) for index in range(len(names))]
    servers = [OpcUaSimServer(name, server.readings, tick_s=period_s)
               for name, server in zip(names, farm, strict=True)]
    ports = [await server.start() for server in servers]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1,
                            lambda: say(event="served", samples=SyntheticServer.changes))
    say(event="listening", ports=ports)
    await stop.wait()
    for server in servers:
        await server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", required=True, help="comma-separated server names")
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--period-s", type=float, default=0.1)
    args = parser.parse_args()
    # plc-sim's and asyncua's logs go to stderr: stdout carries the protocol.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    logging.basicConfig(stream=sys.stderr, level=logging.ERROR)
    asyncio.run(serve(args.names.split(","), args.items, args.period_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
