"""Serving a simulated machine over Modbus, with pymodbus 3.16's simulator datastore.

Three pieces, kept apart so later work can slot in without rework:

* `ServedMachine`: what any scenario hands to a server: its register map, a
  way to read the raw values from the live model, a way to advance the model,
  and the trace record of what is currently served. Nothing Modbus-transport
  specific.
* `build_sim_device`: turns a `ServedMachine` into a pymodbus `SimDevice`.
  Every register access goes through one coroutine (`RegisterAccess.handle`),
  which refreshes the registers from the model and refuses writes; that is the
  seam where delays and exception-code faults can be injected later.
* `ModbusSimServer`: one endpoint: Modbus TCP, RTU frames over TCP (what a
  serial-to-Ethernet converter does) or RTU on a serial line (a pty pair,
  `plc_sim.pty_bus`), serving one or more machines at their unit ids. Each
  endpoint has a `FaultPlan` (`plc_sim.link_faults`): delays and exception codes act
  in `RegisterAccess.handle`, frame faults in pymodbus's `trace_packet` hook
  (the answer's bytes, just before they are written), refusing in `set_fault`.

Device quirks of pymodbus 3.16 handled here: non-shared blocks need a coil and a
discrete-input block even when the device has none (empty lists crash), so a
dummy 16-bit block is defined for each and every access to it is answered
with ILLEGAL DATA ADDRESS; the same goes for a register table a machine does
not use (a meter with input registers only). pymodbus's `SimCore` hands a
request for a unit id nobody serves to device 0, and, without one, fails with a
KeyError (DEVICE FAILURE and a traceback per request); `KnownUnitsOnly` raises
pymodbus's own NoSuchIdException instead, so that Modbus TCP answers exception
11 (gateway target failed to respond, as a gateway does) and an RTU bus stays
silent (`ignore_missing_devices`), as on a real bus only the addressed slave talks.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from plc_sim.link_faults import (
    FRAME_FAULTS,
    NO_FAULT,
    REGISTER_FAULTS,
    Fault,
    FaultPlan,
    Framing,
    frame_unit,
    mangle,
)
from plc_sim.pty_bus import PtyBus
from plc_sim.registers import RegisterSpec, Table, WordRun, contiguous_runs, encode_run

log = structlog.get_logger(__name__)

RawValues = Mapping[str, float]
"""Raw number per register spec name (ints for integer types)."""
TraceRecord = dict[str, object]
Arrays = Mapping[str, Sequence[float]]
"""Array readings by name (a waveform): served over OPC UA only, never in the trace."""


def no_arrays() -> Arrays:
    return {}

READ_FUNCTION_TABLES: dict[int, Table] = {3: "holding", 4: "input"}
"""Read function codes served from the register map, and the table each reads."""
WRITE_FUNCTION_CODES = frozenset({5, 6, 15, 16, 22, 23})
"""Everything that could change the device: refused, the device is read-only to the agent."""

Transport = Literal["tcp", "rtu-tcp", "rtu"]
"""Modbus TCP (MBAP framing), RTU frames over TCP, RTU on a serial line."""
PROTOCOL_NAMES: dict[Transport, str] = {
    "tcp": "modbus-tcp",
    "rtu-tcp": "modbus-rtu-tcp",
    "rtu": "modbus-rtu",
}
"""Each transport under the name a device's `protocol:` uses in the agent's config."""


@dataclass
class ServedMachine:
    """A scenario as a server sees it: a register map backed by a live model.

    `raw_values` must return, for every spec name in `register_map`, the raw
    number to encode (before scaling). `trace_record` returns the engineering
    values as a client decodes them, for the `--trace` file.
    """

    scenario: str
    register_map: tuple[RegisterSpec, ...]
    advance: Callable[[float], None]
    """Moves the model forward by this many simulated seconds."""
    raw_values: Callable[[], RawValues]
    trace_record: Callable[[], TraceRecord]
    fill_gaps: bool = False
    """Answer zeros for unmapped registers between two mapped ones (a meter's reserved
    addresses, readable in a block read) instead of ILLEGAL DATA ADDRESS."""
    arrays: Callable[[], Arrays] = no_arrays
    """Array readings of the present state (the compressor's vibration waveform): a
    register map has no room for them and a trace line no use, OPC UA serves them."""
    runs: tuple[WordRun, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.runs = tuple(contiguous_runs(self.register_map))

    def runs_in(self, table: Table) -> tuple[WordRun, ...]:
        return tuple(run for run in self.runs if run.table == table)

    def current_words(self, table: Table) -> list[tuple[WordRun, list[int]]]:
        """Every run of `table` with its words encoded from the model's present state."""
        raw = self.raw_values()
        return [(run, encode_run(run, raw)) for run in self.runs_in(table)]


class RegisterAccess:
    """The one coroutine pymodbus calls on every register access of the device.

    It is the pymodbus `SimDevice.action`: called after pymodbus has checked
    that the addresses are mapped, with the whole block's register list, which
    it may rewrite in place; returning an `ExcCodes` member turns the answer
    into an exception response.
    """

    def __init__(self, machine: ServedMachine, unit: int = 1, faults: FaultPlan | None = None) -> None:
        self.machine = machine
        self.unit = unit
        self.faults = faults if faults is not None else FaultPlan()

    async def handle(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code in WRITE_FUNCTION_CODES or set_values is not None:
            log.info("write_refused", function_code=function_code, address=address, count=count)
            return ExcCodes.ILLEGAL_FUNCTION
        table = READ_FUNCTION_TABLES.get(function_code)
        if table is None or not self.machine.runs_in(table):
            # Coils and discrete inputs, or a table the map does not use: only a
            # placeholder block is defined (see the module docstring).
            return ExcCodes.ILLEGAL_ADDRESS
        fault = self.faults.take(REGISTER_FAULTS, self.unit, table, address, count)
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
        elif fault is not None and fault.kind == "exception":
            return ExcCodes(fault.code)
        for run, words in self.machine.current_words(table):
            offset = run.address - start_address
            current_registers[offset : offset + len(words)] = words
        if fault is not None and fault.kind == "words":  # a faulty sensor behind the PLC
            for i, word in enumerate(fault.words):
                offset = fault.first + i - start_address
                if 0 <= offset < len(current_registers):
                    current_registers[offset] = word
        return None


def _sim_block(runs: Sequence[WordRun], fill_gaps: bool) -> list[SimData]:
    """SimData entries marking the served registers as valid (values come later).

    Mapped registers only, or with `fill_gaps` everything from the first to
    the last mapped register. An unused table gets a one-register placeholder.
    """
    spans = [(run.address, run.count) for run in runs]
    if fill_gaps and spans:
        end = max(address + count for address, count in spans)
        spans = [(spans[0][0], end - spans[0][0])]
    if not spans:
        spans = [(0, 1)]
    return [
        SimData(address, values=[0] * count, datatype=DataType.UINT16)
        for address, count in spans
    ]


def _unmapped_bits_block() -> list[SimData]:
    """The placeholder coil / discrete-input block pymodbus insists on (refused on access)."""
    return [SimData(0, values=[False] * 16, datatype=DataType.BITS)]


def build_sim_device(
    machine: ServedMachine, unit: int, faults: FaultPlan | None = None
) -> SimDevice:
    """The pymodbus device serving `machine` as unit id `unit`.

    Blocks are non-shared (holding and input are separate address spaces, as
    on a real device); addresses outside the map answer ILLEGAL DATA ADDRESS.
    """
    if not machine.runs:
        raise ValueError("a served machine needs at least one register")
    holding = _sim_block(machine.runs_in("holding"), machine.fill_gaps)
    inputs = _sim_block(machine.runs_in("input"), machine.fill_gaps)
    return SimDevice(
        id=unit,
        simdata=(_unmapped_bits_block(), _unmapped_bits_block(), holding, inputs),
        # A bound method, not the object: pymodbus checks the action with
        # inspect.iscoroutinefunction, which rejects objects with an async __call__.
        action=RegisterAccess(machine, unit, faults).handle,
    )


class KnownUnitsOnly(SimCore):
    """pymodbus's simulator datastore, refusing unit ids it does not hold (see module docstring)."""

    async def async_getValues(  # pymodbus names it so
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if device_id not in self.devices:
            raise NoSuchIdException(f"unit {device_id}")
        result: list[int] | list[bool] | ExcCodes = await super().async_getValues(
            device_id, func_code, address, count
        )
        return result

    async def async_setValues(  # pymodbus names it so
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        if device_id not in self.devices:
            raise NoSuchIdException(f"unit {device_id}")
        result: ExcCodes | None = await super().async_setValues(
            device_id, func_code, address, values
        )
        return result


@dataclass(frozen=True, slots=True)
class SerialLine:
    """A serial line's settings: accepted and announced (a pty has no baud rate to honour)."""

    path: Path | None = None
    """Where the client's end of the pty appears (a symlink); None: the pty's own name."""
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stop_bits: int = 1
    byte_size: int = 8


class ModbusSimServer:
    """One Modbus endpoint serving machines by unit id; startable and stoppable from a loop.

    `machines` is one machine (served as `unit`) or a mapping unit id -> machine
    (several devices behind one address, or on one RS-485 bus).
    """

    def __init__(
        self,
        machines: ServedMachine | Mapping[int, ServedMachine],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit: int = 1,
        transport: Transport = "tcp",
        serial: SerialLine | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        self.units: dict[int, ServedMachine] = (
            {unit: machines} if isinstance(machines, ServedMachine) else dict(machines)
        )
        self.machine = next(iter(self.units.values()))
        self.host = host
        self.requested_port = port
        self.unit = next(iter(self.units))
        self.transport: Transport = transport
        self.serial = serial or SerialLine()
        self.faults = faults if faults is not None else FaultPlan()
        self.framing: Framing = "socket" if transport == "tcp" else "rtu"
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._bus: PtyBus | None = None
        self._bound_port: int | None = None
        self._refusing = False
        self._rng = random.Random(0)

    def _devices(self) -> list[SimDevice]:
        return [
            build_sim_device(machine, unit, self.faults) for unit, machine in self.units.items()
        ]

    def _make_server(self) -> ModbusTcpServer | ModbusSerialServer:
        """The transport: the only place that knows TCP from serial."""
        server = self._make_transport()
        server.context = KnownUnitsOnly(self._devices())
        return server

    def _make_transport(self) -> ModbusTcpServer | ModbusSerialServer:
        if self.transport == "rtu":
            assert self._bus is not None
            line = self.serial
            return ModbusSerialServer(
                self._devices(),
                framer=FramerType.RTU,
                port=self._bus.server_path,
                baudrate=line.baudrate,
                # Linux ptys refuse parity (tcsetattr: EINVAL): the configured
                # parity is announced, the pty runs without (so must its client).
                parity="N",
                stopbits=line.stop_bits,
                bytesize=line.byte_size,
                ignore_missing_devices=True,
                trace_packet=self._on_packet,
            )
        port = self._bound_port if self._bound_port is not None else self.requested_port
        return ModbusTcpServer(
            self._devices(),
            address=(self.host, port),
            framer=FramerType.SOCKET if self.transport == "tcp" else FramerType.RTU,
            ignore_missing_devices=self.framing == "rtu",
            trace_packet=self._on_packet,
        )

    async def start(self) -> int:
        """Start serving; the bound TCP port (the real one when `port` was 0), 0 for serial."""
        if self._server is not None or self._bus is not None:
            raise RuntimeError("server already started")
        if self.transport == "rtu":
            self._bus = PtyBus(self.serial.path)
            self._bus.open()
        try:
            await self._listen()
        except BaseException:
            await self.stop()
            raise
        port = self._bound_port or 0
        log.info("listening", **self.describe(), units=sorted(self.units))
        return port

    async def _listen(self) -> None:
        server = self._make_server()
        # background=True returns once listening; serve_forever() would block
        # until shutdown and hide the moment the port is known.
        await server.serve_forever(background=True)
        self._server = server
        if self.transport != "rtu":
            self._bound_port = self.port

    @property
    def port(self) -> int:
        """The bound TCP port, read from the listening socket.

        After listening, pymodbus keeps the `asyncio.Server` returned by
        `loop.create_server` as `transport`; its sockets know the port. A host
        name resolving to several addresses gets one socket per address, each
        with its own port when 0 was asked for; the first one is reported.
        """
        server = self._server
        listener = server.transport if server is not None else None
        if not isinstance(listener, asyncio.Server) or not listener.sockets:
            if self._bound_port is not None:
                return self._bound_port  # refusing connections right now
            raise RuntimeError("server is not listening")
        bound: int = listener.sockets[0].getsockname()[1]
        return bound

    def describe(self) -> dict[str, object]:
        """Where a client finds this endpoint (for the listening line)."""
        if self.transport == "rtu":
            line = self.serial
            return {
                "protocol": PROTOCOL_NAMES[self.transport],
                "serial_port": self._bus.path if self._bus else None,
                "baudrate": line.baudrate,
                "parity": line.parity,
                "stop_bits": line.stop_bits,
                "byte_size": line.byte_size,
            }
        return {"protocol": PROTOCOL_NAMES[self.transport], "host": self.host, "port": self.port}

    async def set_fault(self, fault: Fault) -> None:
        """Make `fault` the active one (`Fault()` clears); `refuse` stops serving until cleared."""
        self.faults.set(fault)
        log.info("fault_set", protocol=PROTOCOL_NAMES[self.transport], **fault.as_json())
        if fault.kind == "refuse" and not self._refusing:
            self._refusing = True
            await self._close_server()
        elif fault.kind != "refuse" and self._refusing:
            self._refusing = False
            await self._listen()

    async def clear_fault(self) -> None:
        await self.set_fault(NO_FAULT)

    def _on_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's `trace_packet` hook: every frame in and out passes here."""
        if not sending:
            return data
        unit = frame_unit(self.framing, data)
        fault = self.faults.take(FRAME_FAULTS, -1 if unit is None else unit)
        if fault is None:
            return data
        if fault.kind == "drop" and self.transport != "rtu":
            self._reset_connections()
        log.info("fault_applied", fault=fault.kind, unit=unit)
        return mangle(fault.kind, self.framing, data, self._rng)

    def _reset_connections(self) -> None:
        """Abort every client connection with an RST (SO_LINGER 0), as a crashed device does."""
        server = self._server
        if server is None:
            return
        for handler in list(server.active_connections.values()):
            transport = handler.transport
            if transport is None:
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            else:
                transport.close()

    async def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]  # untyped in pymodbus 3.16

    async def stop(self) -> None:
        """Close the listener, every client connection and the pty bus; safe to call twice."""
        was_running = self._server is not None or self._bus is not None
        await self._close_server()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.close()
        if was_running:
            log.info("stopped", protocol=PROTOCOL_NAMES[self.transport])
