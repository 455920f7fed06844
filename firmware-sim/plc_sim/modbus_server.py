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
* `ModbusSimServer`: owns the transport (TCP today). The transport is created
  in one method, so RTU over a serial line (same `SimDevice`) and frame-level
  faults (pymodbus's `trace_packet` / `trace_connect` hooks, or closing
  `active_connections`) are local additions.

Device quirks of pymodbus 3.16 handled here: non-shared blocks need a coil and a
discrete-input block even when the device has none (empty lists crash), so a
dummy 16-bit block is defined for each and every access to it is answered
with ILLEGAL DATA ADDRESS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from plc_sim.registers import RegisterSpec, Table, WordRun, contiguous_runs, encode_run

log = structlog.get_logger(__name__)

RawValues = Mapping[str, float]
"""Raw number per register spec name (ints for integer types)."""
TraceRecord = dict[str, object]

READ_FUNCTION_TABLES: dict[int, Table] = {3: "holding", 4: "input"}
"""Read function codes served from the register map, and the table each reads."""
WRITE_FUNCTION_CODES = frozenset({5, 6, 15, 16, 22, 23})
"""Everything that could change the device: refused, the device is read-only to the agent."""

_SIM_DATATYPE: dict[str, DataType] = {
    "int16": DataType.INT16,
    "uint16": DataType.UINT16,
    "uint32": DataType.UINT32,
    "float32": DataType.FLOAT32,
}


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

    def __init__(self, machine: ServedMachine) -> None:
        self.machine = machine

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
        if table is None:
            # Coils and discrete inputs: the map has none (see the module docstring).
            return ExcCodes.ILLEGAL_ADDRESS
        for run, words in self.machine.current_words(table):
            offset = run.address - start_address
            current_registers[offset : offset + len(words)] = words
        return None


def _sim_block(runs: Sequence[WordRun]) -> list[SimData]:
    """SimData entries marking exactly the mapped registers as valid (values come later)."""
    block: list[SimData] = []
    for run in runs:
        address = run.address
        for spec in run.specs:
            datatype = _SIM_DATATYPE[spec.type]
            values: float = 0.0 if datatype is DataType.FLOAT32 else 0
            block.append(SimData(address, values=values, datatype=datatype))
            address += spec.count
    return block


def _unmapped_bits_block() -> list[SimData]:
    """The placeholder coil / discrete-input block pymodbus insists on (refused on access)."""
    return [SimData(0, values=[False] * 16, datatype=DataType.BITS)]


def build_sim_device(machine: ServedMachine, unit: int) -> SimDevice:
    """The pymodbus device serving `machine` as unit id `unit`.

    Blocks are non-shared (holding and input are separate address spaces, as
    on a real device); addresses outside the map answer ILLEGAL DATA ADDRESS.
    """
    holding = _sim_block(machine.runs_in("holding"))
    inputs = _sim_block(machine.runs_in("input"))
    if not holding or not inputs:
        # pymodbus needs a non-empty list per table; a map without one of them
        # would need a placeholder block refused like the bit tables.
        raise ValueError("a served machine needs at least one holding and one input register")
    return SimDevice(
        id=unit,
        simdata=(_unmapped_bits_block(), _unmapped_bits_block(), holding, inputs),
        # A bound method, not the object: pymodbus checks the action with
        # inspect.iscoroutinefunction, which rejects objects with an async __call__.
        action=RegisterAccess(machine).handle,
    )


class ModbusSimServer:
    """A Modbus TCP server for one machine, startable and stoppable from a running loop."""

    def __init__(self, machine: ServedMachine, *, host: str, port: int, unit: int = 1) -> None:
        self.machine = machine
        self.host = host
        self.requested_port = port
        self.unit = unit
        self._server: ModbusTcpServer | None = None

    def _make_server(self) -> ModbusTcpServer:
        """The transport; the only place that knows it is TCP."""
        return ModbusTcpServer(
            build_sim_device(self.machine, self.unit), address=(self.host, self.requested_port)
        )

    async def start(self) -> int:
        """Start listening and return the bound port (the real one when `port` was 0)."""
        if self._server is not None:
            raise RuntimeError("server already started")
        server = self._make_server()
        # background=True returns once listening; serve_forever() would block
        # until shutdown and hide the moment the port is known.
        await server.serve_forever(background=True)
        self._server = server
        port = self.port
        log.info("listening", protocol="modbus-tcp", host=self.host, port=port, unit=self.unit)
        return port

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
            raise RuntimeError("server is not listening")
        bound: int = listener.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        """Close the listener and every client connection; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()  # type: ignore[no-untyped-call]  # untyped in pymodbus 3.16
        log.info("stopped", protocol="modbus-tcp")
