"""Everything one `plc-sim` process serves: its units, its endpoints, its control channel.

The machine of `--scenario` is served at `--unit`; each `--meter KIND[@UNIT]`
adds an energy meter at another unit id (2, 3, ... unless given). All units are
reachable on every endpoint: Modbus TCP always, RTU over TCP with
`--rtu-tcp-port`, RTU on a pseudo-terminal with `--rtu PATH` (one RS-485 bus:
only the addressed unit answers). `--control-port` opens the fault control
channel (`plc_sim.control`).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from plc_sim.control import ControlServer
from plc_sim.meter_modbus import METER_KINDS, served_meter
from plc_sim.meters import Meter
from plc_sim.modbus_server import ModbusSimServer, SerialLine, ServedMachine, TraceRecord

_METER = re.compile(r"^(?P<kind>[a-z0-9]+)(@(?P<unit>\d+))?$")


@dataclass(frozen=True, slots=True)
class EndpointOptions:
    """The command line's say on units and endpoints (beside the scenario's)."""

    meters: tuple[tuple[str, int | None], ...] = ()
    rtu_tcp_port: int | None = None
    rtu: SerialLine | None = None
    control_port: int | None = None


def parse_meter(text: str) -> tuple[str, int | None]:
    """`sdm630` or `sdm630@2` -> (kind, unit or None)."""
    match = _METER.match(text)
    if match is None or match["kind"] not in METER_KINDS:
        kinds = ", ".join(sorted(METER_KINDS))
        raise argparse.ArgumentTypeError(f"expected KIND or KIND@UNIT with KIND one of {kinds}")
    unit = int(match["unit"]) if match["unit"] else None
    if unit is not None and not 1 <= unit <= 247:
        raise argparse.ArgumentTypeError("a unit id on a bus is 1..247")
    return match["kind"], unit


def add_arguments(parser: argparse.ArgumentParser, port_type: Callable[[str], int]) -> None:
    """The options of this module, added to the `plc-sim` parser."""
    parser.add_argument(
        "--meter", type=parse_meter, action="append", default=[], metavar="KIND[@UNIT]",
        help=f"also serve an energy meter ({', '.join(sorted(METER_KINDS))}) at UNIT "
        "(default: the next free unit id from 2); repeatable",
    )
    parser.add_argument(
        "--rtu-tcp-port", type=port_type, default=None, metavar="PORT",
        help="also serve RTU frames over TCP (a serial-to-Ethernet converter); 0 picks a port",
    )
    parser.add_argument(
        "--rtu", type=Path, default=None, metavar="PATH",
        help="also serve RTU on a pseudo-terminal; PATH becomes a symlink to the client's end",
    )
    parser.add_argument("--baudrate", type=int, default=9600, help="RTU line (default %(default)s)")
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N",
                        help="RTU line, announced only: a pty carries no parity (default N)")
    parser.add_argument("--stop-bits", type=int, choices=(1, 2), default=1)
    parser.add_argument("--byte-size", type=int, choices=(7, 8), default=8)
    parser.add_argument(
        "--control-port", type=port_type, default=None, metavar="PORT",
        help="open the fault control channel (JSON lines) on PORT; 0 picks a port",
    )


def options_from(ns: argparse.Namespace) -> EndpointOptions:
    rtu = None
    if ns.rtu is not None:
        rtu = SerialLine(ns.rtu, ns.baudrate, ns.parity, ns.stop_bits, ns.byte_size)
    return EndpointOptions(tuple(ns.meter), ns.rtu_tcp_port, rtu, ns.control_port)


def build_units(
    machine: ServedMachine, unit: int, meters: tuple[tuple[str, int | None], ...], seed: int
) -> dict[int, ServedMachine]:
    """Unit id -> machine: the scenario's machine, then each meter (seeded apart from it)."""
    units: dict[int, ServedMachine] = {unit: machine}
    for index, (kind, wanted) in enumerate(meters):
        meter_unit = wanted if wanted is not None else min(set(range(2, 248)) - set(units))
        if meter_unit in units:
            raise ValueError(f"unit {meter_unit} is served twice")
        units[meter_unit] = served_meter(kind, Meter(seed=seed + 1 + index))
    return units


def advance_all(units: Mapping[int, ServedMachine]) -> Callable[[float], None]:
    def advance(dt_s: float) -> None:
        for machine in units.values():
            machine.advance(dt_s)

    return advance


def trace_all(units: Mapping[int, ServedMachine], main_unit: int) -> Callable[[], TraceRecord]:
    """The trace line: the main machine's record as before, other units under "units"."""

    def record() -> TraceRecord:
        line = units[main_unit].trace_record()
        others = {
            str(unit): {"kind": machine.scenario, **machine.trace_record()}
            for unit, machine in units.items()
            if unit != main_unit
        }
        if others:
            line["units"] = others
        return line

    return record


class Endpoints:
    """Starts and stops every endpoint (and the control channel) together."""

    def __init__(
        self, units: Mapping[int, ServedMachine], host: str, modbus_port: int,
        options: EndpointOptions,
    ) -> None:
        self.units = dict(units)
        self.servers: dict[str, ModbusSimServer] = {
            "modbus-tcp": ModbusSimServer(self.units, host=host, port=modbus_port)
        }
        if options.rtu_tcp_port is not None:
            self.servers["modbus-rtu-tcp"] = ModbusSimServer(
                self.units, host=host, port=options.rtu_tcp_port, transport="rtu-tcp"
            )
        if options.rtu is not None:
            self.servers["modbus-rtu"] = ModbusSimServer(
                self.units, transport="rtu", serial=options.rtu
            )
        self.control = (
            ControlServer(self.servers, host, options.control_port)
            if options.control_port is not None
            else None
        )
        self.control_port: int | None = None

    @property
    def tcp_port(self) -> int:
        return self.servers["modbus-tcp"].port

    async def start(self) -> None:
        """Start all; on a failure stop what started and raise (RuntimeError or OSError)."""
        try:
            for server in self.servers.values():
                await server.start()
            if self.control is not None:
                self.control_port = await self.control.start()
        except BaseException:
            await self.stop()
            raise

    def announce(self) -> dict[str, object]:
        """The listening line's additions: units, endpoints, control channel."""
        info: dict[str, object] = {
            "units": {str(unit): machine.scenario for unit, machine in self.units.items()},
            "endpoints": {name: server.describe() for name, server in self.servers.items()},
        }
        if self.control is not None:
            info["control"] = {"host": self.control.host, "port": self.control_port}
        return info

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.stop()
        for server in self.servers.values():
            await server.stop()
