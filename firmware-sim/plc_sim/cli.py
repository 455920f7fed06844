"""`plc-sim`: serve a simulated machine over Modbus TCP for demos and end-to-end tests.

The process contract the tests rely on:

* stdout carries exactly one JSON line, `{"event": "listening", ...}`, printed
  and flushed once the port is bound (with `--modbus-port 0`, the real port);
* logs go to stderr only;
* SIGINT and SIGTERM stop the server and exit with status 0 within a second;
* `--trace FILE` gets one JSON line per model tick (and one for the initial
  state, written before the listening line) holding the values as served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from plc_sim.clock import run_clock
from plc_sim.endpoints import (
    EndpointOptions,
    Endpoints,
    add_arguments,
    advance_all,
    build_units,
    options_from,
    trace_all,
)
from plc_sim.logs import LOG_LEVELS, configure_logging
from plc_sim.modbus_server import ServedMachine
from plc_sim.opcua_server import OpcUaSimServer
from plc_sim.scenarios import SCENARIOS, ScenarioOptions
from plc_sim.trace import TraceWriter

log = structlog.get_logger(__name__)

DEFAULT_MODBUS_PORT = 5020
"""Unprivileged stand-in for Modbus's 502, so the simulator never needs root."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The validated command line."""

    scenario: str
    host: str
    modbus_port: int
    unit: int
    seed: int
    speed: float
    tick_s: float
    trace: Path | None
    log_level: str
    opcua_port: int | None = None
    """Also serve the machine over OPC UA on this port (0: a free one); off when None."""
    opcua_security: bool = False
    opcua_pki: Path | None = None
    endpoints: EndpointOptions = field(default_factory=EndpointOptions)
    fault_onset_s: float = 120.0


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0.0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {text}")
        return value

    parse.__name__ = "int"  # argparse names the type in its "invalid ... value" errors
    return parse


def _epilog() -> str:
    lines = ["scenarios:"]
    lines += [f"  {name:<12} {scenario.description}" for name, scenario in SCENARIOS.items()]
    lines += [
        "",
        "ports:",
        f"  modbus-tcp   --modbus-port (default {DEFAULT_MODBUS_PORT}; 0 picks a free port,",
        (
            "               announced on stdout as the JSON line "
            '{"event": "listening", ..., "port": N})'
        ),
        "  rtu-tcp      --rtu-tcp-port; rtu: --rtu PATH (a pty; symlink at PATH)",
        '  control      --control-port: faults as JSON lines, e.g. {"fault": "delay", "seconds": 2}',
        '               every endpoint is in the listening line\'s "endpoints"',
        "",
        "meters (--meter KIND[@UNIT], served beside the machine on every endpoint):",
        "  sdm630 (Eastron SDM630), iem3000 (Schneider iEM3000), em24 (Carlo Gavazzi EM24)",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The `plc-sim` argument parser (its --help lists the scenarios and the ports)."""
    parser = argparse.ArgumentParser(
        prog="plc-sim",
        description="Simulated PLC: serves a machine model over Modbus TCP.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario", choices=sorted(SCENARIOS), default="compressor", help="machine to simulate"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--modbus-port",
        type=_int_in(0, 65535),
        default=DEFAULT_MODBUS_PORT,
        help="Modbus TCP port; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--unit", type=_int_in(0, 255), default=1, help="Modbus unit id (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default %(default)s)")
    parser.add_argument(
        "--speed",
        type=_positive_float,
        default=1.0,
        help="simulated seconds per wall second (default %(default)s)",
    )
    parser.add_argument(
        "--tick-s",
        type=_positive_float,
        default=0.1,
        help="wall seconds between model updates (default %(default)s)",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the served values to FILE, one JSON line per model tick",
    )
    add_arguments(parser, _int_in(0, 65535))
    parser.add_argument(
        "--fault-onset-s",
        type=float,
        default=120.0,
        help="fault scenarios: simulated seconds of normal operation before the fault "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="(default %(default)s)"
    )
    opcua = parser.add_argument_group("OPC UA (see plc_sim/opcua_server.py)")
    opcua.add_argument("--opcua-port", type=_int_in(0, 65535), default=None,
                       help="also serve over OPC UA on this port; 0 picks a free one, "
                       "announced as a second listening line with protocol opcua")
    opcua.add_argument("--opcua-security", action="store_true",
                       help="offer only Basic256Sha256 Sign/SignAndEncrypt endpoints")
    opcua.add_argument("--opcua-pki", type=Path, default=None, metavar="DIR",
                       help="where the server certificate is made and kept (with --opcua-security)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> SimConfig:
    parser = build_parser()
    ns = parser.parse_args(argv)
    wanted = [unit for _, unit in ns.meter if unit is not None]
    if ns.unit in wanted or len(set(wanted)) < len(wanted):
        parser.error("--meter: every unit id may be served once (--unit is the machine's)")
    return SimConfig(
        scenario=ns.scenario,
        host=ns.host,
        modbus_port=ns.modbus_port,
        unit=ns.unit,
        seed=ns.seed,
        speed=ns.speed,
        tick_s=ns.tick_s,
        trace=ns.trace,
        log_level=ns.log_level,
        opcua_port=ns.opcua_port,
        opcua_security=ns.opcua_security,
        opcua_pki=ns.opcua_pki,
        endpoints=options_from(ns),
        fault_onset_s=ns.fault_onset_s,
    )


def listening_line(config: SimConfig, port: int, extra: dict[str, object] | None = None) -> str:
    """The single stdout line announcing where the simulator listens."""
    return json.dumps(
        {
            "event": "listening",
            "scenario": config.scenario,
            "protocol": "modbus-tcp",
            "host": config.host,
            "port": port,
            "unit": config.unit,
            **(extra or {}),
        }
    )


async def serve(config: SimConfig, trace: TraceWriter | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM; return the process exit status."""
    options = ScenarioOptions(seed=config.seed, fault_onset_s=config.fault_onset_s)
    machine = SCENARIOS[config.scenario].factory(options)
    units = build_units(machine, config.unit, config.endpoints.meters, config.seed)
    trace_record = trace_all(units, config.unit)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def on_tick() -> None:
        if trace is not None:
            trace.write(trace_record())

    on_tick()  # the initial state is served from the first request on
    server = Endpoints(units, config.host, config.modbus_port, config.endpoints)
    try:
        await server.start()
    except (RuntimeError, OSError) as exc:
        log.error("listen_failed", host=config.host, port=config.modbus_port, error=str(exc))
        return 1
    clock = asyncio.create_task(
        run_clock(advance_all(units), tick_s=config.tick_s, speed=config.speed, on_tick=on_tick)
    )
    print(listening_line(config, server.tcp_port, server.announce()), flush=True)
    opcua = await _start_opcua(config, machine, server.announce().get("control"))
    if server.control is not None:
        server.control.opcua = opcua
    log.info(
        "started",
        scenario=config.scenario,
        seed=config.seed,
        speed=config.speed,
        tick_s=config.tick_s,
        trace=str(config.trace) if config.trace else None,
    )
    stopping = asyncio.create_task(stop.wait())
    try:
        # The clock only ends by failing (e.g. the trace disk is full); serving
        # frozen values after that would be a silent lie, so stop with an error.
        done, _ = await asyncio.wait({stopping, clock}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        clock.cancel()
        await asyncio.gather(stopping, clock, return_exceptions=True)
        await server.stop()
        if opcua is not None:
            await opcua.stop()
    if clock in done and not clock.cancelled() and clock.exception() is not None:
        log.error("clock_failed", exc_info=clock.exception())
        return 1
    log.info("exiting")
    return 0


async def _start_opcua(config: SimConfig, machine: ServedMachine,
                      control: object = None) -> OpcUaSimServer | None:
    """The OPC UA face of the same model, announced on its own listening line (with the
    control channel, which takes its faults too)."""
    if config.opcua_port is None:
        return None
    pki = config.opcua_pki or Path("plc-sim-pki")
    opcua = OpcUaSimServer(machine.scenario, machine.trace_record, host=config.host,
                           port=config.opcua_port, tick_s=config.tick_s,
                           security=config.opcua_security, pki_dir=pki,
                           arrays=machine.arrays)
    await opcua.start()
    line = {"event": "listening", "scenario": config.scenario, "protocol": "opcua",
            "host": config.host, "port": opcua.port, "endpoint": opcua.endpoint,
            "node": opcua.node_id("active_power_w")}
    if control is not None:
        line["control"] = control
    print(json.dumps(line), flush=True)
    return opcua


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (`plc-sim`)."""
    config = parse_args(argv)
    configure_logging(config.log_level)
    if config.trace is None:
        return asyncio.run(serve(config))
    with TraceWriter(config.trace) as trace:
        return asyncio.run(serve(config, trace))


if __name__ == "__main__":
    sys.exit(main())
