"""Many simulated Modbus TCP devices in one process: the Modbus side of the system benchmark.

    python bench/system/modbus_farm.py --devices 20 --tags 50 --change-period-s 2

One `plc_sim` `ModbusSimServer` per device, each on a port of its own (port 0: the kernel
picks), serving the register map of `workload.device_tags`. Prints one JSON line when every
device listens: `{"event": "listening", "ports": [...]}`. On SIGUSR1 it prints
`{"event": "served", "registers": N, "samples": S}`: the registers read so far by any
client, and the tag values they make (every device has the same map, and a client reads
only mapped registers), so that the benchmark can count the samples a client actually
read over a time span whatever request sizes it uses. SIGTERM or SIGINT stops it.

Every device's `stamp_ms` is set to the wall-clock time in milliseconds (mod 2**32) every
`change_period_s` on average (uniformly 0.5 to 1.5 times it, so that the changes fall at
every phase of a client's polls).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import random
import signal
import sys
import time

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from workload import device_tags

from plc_sim.modbus_server import ModbusSimServer, RegisterAccess, ServedMachine, build_sim_device
from plc_sim.registers import RegisterSpec

STAMP_MODULUS = 2**32


class SyntheticDevice:
    """The live values of one device: sines computed at read time, and the stamp."""

    def __init__(self, index: int, tags: int) -> None:
        self.specs = tuple(
            RegisterSpec(tag.name, tag.table, tag.address, tag.type)  # type: ignore[arg-type]
            for tag in device_tags(tags)
        )
        self.index = index
        self.stamp_ms = 0

    def raw_values(self) -> dict[str, float]:
        now = time.monotonic()
        values: dict[str, float] = {}
        for number, spec in enumerate(self.specs):
            if spec.name == "stamp_ms":
                values[spec.name] = self.stamp_ms
            elif spec.type == "float32":
                period = 10.0 + number + self.index
                values[spec.name] = 100.0 * number + 10.0 * math.sin(2 * math.pi * now / period)
            else:
                period = 30.0 + number
                values[spec.name] = round(500 + 100 * math.sin(2 * math.pi * now / period))
        return values

    def machine(self) -> ServedMachine:
        return ServedMachine(
            scenario="bench-farm", register_map=self.specs, advance=lambda _s: None,
            raw_values=self.raw_values, trace_record=dict,
        )


class CountingAccess(RegisterAccess):
    """The plc-sim register access, counting the registers it answered."""

    served = 0

    async def handle(
        self, function_code: int, start_address: int, address: int, count: int,
        current_registers: list[int], set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        result = await super().handle(function_code, start_address, address, count,
                                      current_registers, set_values)
        if result is None:
            CountingAccess.served += count
        return result


class CountingServer(ModbusSimServer):
    def _make_server(self) -> ModbusTcpServer:
        device = dataclasses.replace(build_sim_device(self.machine, self.unit),
                                     action=CountingAccess(self.machine).handle)
        return ModbusTcpServer(device, address=(self.host, self.requested_port))


async def change_stamps(device: SyntheticDevice, period_s: float, rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0, period_s))
    while True:
        device.stamp_ms = time.time_ns() // 1_000_000 % STAMP_MODULUS
        await asyncio.sleep(period_s * rng.uniform(0.5, 1.5))


def say(**line: object) -> None:
    print(json.dumps(line), flush=True)


async def serve(devices: int, tags: int, change_period_s: float) -> None:
    rng = random.Random(8)
    farm = [SyntheticDevice(index, tags) for index in range(devices)]
    servers = [CountingServer(device.machine(), host="127.0.0.1", port=0) for device in farm]
    ports = [await server.start() for server in servers]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    registers_per_device = sum(spec.count for spec in farm[0].specs)
    loop.add_signal_handler(signal.SIGUSR1, lambda: say(
        event="served", registers=CountingAccess.served,
        samples=CountingAccess.served * tags / registers_per_device))
    changers = [asyncio.create_task(change_stamps(device, change_period_s, rng))
                for device in farm]
    say(event="listening", ports=ports)
    await stop.wait()
    for task in changers:
        task.cancel()
    for server in servers:
        await server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--tags", type=int, required=True)
    parser.add_argument("--change-period-s", type=float, default=2.0)
    args = parser.parse_args()
    # plc-sim's logs (one `listening` per device) go to stderr: stdout carries the protocol.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    asyncio.run(serve(args.devices, args.tags, args.change_period_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
