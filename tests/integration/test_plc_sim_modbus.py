"""The simulated compressor over real Modbus TCP, read with pymodbus's own client.

In-process tests hold the model still and move it by hand, so every read can be
compared exactly with what the model serves; the subprocess test checks the
`plc-sim` command's process contract (listening line, trace file, signals).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from pymodbus.client import AsyncModbusTcpClient

from agent.testing import wait_until_async
from plc_sim.clock import run_clock
from plc_sim.compressor import Compressor
from plc_sim.compressor_modbus import FIRMWARE_VERSION, served_compressor, served_readings
from plc_sim.modbus_server import ModbusSimServer, ServedMachine
from plc_sim.scenarios import SCENARIOS, ScenarioOptions

HOST = "127.0.0.1"
UNIT = 1
DT = AsyncModbusTcpClient.DATATYPE
INPUT_FIELDS = (
    "motor_current_a",
    "active_power_w",
    "energy_wh",
    "discharge_pressure_bar",
    "discharge_temp_c",
    "state",
)


@dataclass
class Served:
    compressor: Compressor
    machine: ServedMachine
    server: ModbusSimServer
    port: int


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    compressor = Compressor(seed=1)
    served_machine = served_compressor(compressor)
    server = ModbusSimServer(served_machine, host=HOST, port=0, unit=UNIT)
    port = await server.start()
    try:
        yield Served(compressor, served_machine, server, port)
    finally:
        await server.stop()


@pytest.fixture
async def client(served: Served) -> AsyncIterator[AsyncModbusTcpClient]:
    modbus = AsyncModbusTcpClient(HOST, port=served.port, timeout=2, retries=0, reconnect_delay=0)
    assert await modbus.connect()
    try:
        yield modbus
    finally:
        modbus.close()


def number(
    regs: Sequence[int],
    datatype: AsyncModbusTcpClient.DATATYPE,
    word_order: Literal["big", "little"] = "big",
) -> int | float:
    """One value decoded by pymodbus's client, independently of the simulator's encoder."""
    value = AsyncModbusTcpClient.convert_from_registers(regs, datatype, word_order=word_order)
    assert isinstance(value, int | float)
    return value


def decode_inputs(regs: Sequence[int]) -> dict[str, int | float]:
    """Input registers 0..10 as the agent's config describes them."""
    return {
        "motor_current_a": number(regs[0:2], DT.FLOAT32),
        "active_power_w": number(regs[2:4], DT.FLOAT32),
        "energy_wh": number(regs[4:6], DT.UINT32),
        "discharge_pressure_bar": number(regs[6:7], DT.INT16) * 0.01,
        "discharge_temp_c": number(regs[7:8], DT.INT16) * 0.1,
        "state": number(regs[8:9], DT.UINT16),
        "vibration_mm_s": number(regs[9:10], DT.UINT16) * 0.01,
        "air_flow_m3_min": number(regs[10:11], DT.UINT16) * 0.001,
    }


def decode_holding(regs: Sequence[int]) -> dict[str, int | float]:
    """Holding registers 100..103; operating seconds are low word first (CDAB)."""
    return {
        "operating_s": number(regs[0:2], DT.UINT32, word_order="little"),
        "firmware_version": number(regs[2:3], DT.UINT16),
        "load_cycles": number(regs[3:4], DT.UINT16),
    }


async def read_all(client: AsyncModbusTcpClient) -> dict[str, int | float]:
    inputs = await client.read_input_registers(0, count=11, device_id=UNIT)
    holding = await client.read_holding_registers(100, count=4, device_id=UNIT)
    assert not inputs.isError(), inputs
    assert not holding.isError(), holding
    return decode_inputs(inputs.registers) | decode_holding(holding.registers)


async def test_registers_decode_to_exactly_the_served_values(
    served: Served, client: AsyncModbusTcpClient
) -> None:
    decoded = await read_all(client)

    expected = asdict(served_readings(served.compressor.state))
    assert decoded == expected | {"firmware_version": FIRMWARE_VERSION}
    assert decoded["energy_wh"] == 1_234_567
    assert decoded["state"] == 2


async def test_registers_follow_the_model_as_it_advances(
    served: Served, client: AsyncModbusTcpClient
) -> None:
    before = await read_all(client)
    served.machine.advance(45.0)
    after = await read_all(client)

    assert after == asdict(served_readings(served.compressor.state)) | {
        "firmware_version": FIRMWARE_VERSION
    }
    assert after["energy_wh"] > before["energy_wh"]
    # The motor was on for part of the 45 s (seed 1 switches off after 31 s).
    assert before["operating_s"] < after["operating_s"] <= before["operating_s"] + 45


async def test_a_single_value_can_be_read_alone(
    served: Served, client: AsyncModbusTcpClient
) -> None:
    energy = await client.read_input_registers(4, count=2, device_id=UNIT)
    operating = await client.read_holding_registers(100, count=2, device_id=UNIT)

    readings = served_readings(served.compressor.state)
    assert client.convert_from_registers(energy.registers, DT.UINT32) == readings.energy_wh
    assert (
        client.convert_from_registers(operating.registers, DT.UINT32, word_order="little")
        == readings.operating_s
    )


@pytest.mark.parametrize(
    ("function", "address", "count"),
    [
        ("read_input_registers", 11, 1),
        ("read_input_registers", 10, 2),
        ("read_input_registers", 100, 1),
        ("read_holding_registers", 0, 1),
        ("read_holding_registers", 99, 1),
        ("read_holding_registers", 99, 2),
        ("read_holding_registers", 103, 2),
        ("read_holding_registers", 104, 1),
        ("read_coils", 0, 1),
        ("read_discrete_inputs", 0, 1),
    ],
)
async def test_unmapped_addresses_answer_illegal_data_address(
    client: AsyncModbusTcpClient, function: str, address: int, count: int
) -> None:
    response = await getattr(client, function)(address, count=count, device_id=UNIT)

    assert response.isError()
    assert response.exception_code == 2


@pytest.mark.parametrize(
    ("function", "address", "value"),
    [
        ("write_register", 100, 1),
        ("write_register", 102, 0x0203),
        ("write_registers", 100, [1, 2, 3]),
        ("write_register", 0, 1),
        ("write_coil", 0, True),
    ],
)
async def test_writes_are_refused_and_change_nothing(
    served: Served, client: AsyncModbusTcpClient, function: str, address: int, value: object
) -> None:
    before = await read_all(client)
    response = await getattr(client, function)(address, value, device_id=UNIT)

    assert response.isError()
    assert response.exception_code in (1, 2)  # ILLEGAL FUNCTION or ILLEGAL DATA ADDRESS
    assert await read_all(client) == before


async def test_another_unit_id_gets_an_exception(client: AsyncModbusTcpClient) -> None:
    response = await client.read_input_registers(0, count=9, device_id=UNIT + 1)

    # As a gateway answers for a slave that is not there: GATEWAY TARGET DEVICE
    # FAILED TO RESPOND. (An RTU bus stays silent instead: test_plc_sim_faults_on_the_wire.)
    assert response.isError()
    assert response.exception_code == 11


async def test_the_clock_moves_the_served_values(
    served: Served, client: AsyncModbusTcpClient
) -> None:
    first = await read_all(client)
    ticks = 0

    def on_tick() -> None:
        nonlocal ticks
        ticks += 1

    clock = asyncio.create_task(
        run_clock(served.machine.advance, tick_s=0.01, speed=100.0, on_tick=on_tick)
    )
    try:

        async def operating_seconds_moved() -> bool:
            return (await read_all(client))["operating_s"] >= first["operating_s"] + 2

        await wait_until_async(operating_seconds_moved, timeout_s=10.0,
                               what="operating seconds to advance")
    finally:
        clock.cancel()
    assert ticks > 0
    assert served.compressor.state.sim_time_s >= 2.0


async def test_a_busy_port_fails_to_start(served: Served) -> None:
    second = ModbusSimServer(served.machine, host=HOST, port=served.port)

    with pytest.raises(RuntimeError):
        await second.start()


async def test_every_registered_scenario_can_be_served() -> None:
    for name, scenario in SCENARIOS.items():
        machine = scenario.factory(ScenarioOptions(seed=1))
        server = ModbusSimServer(machine, host=HOST, port=0)
        try:
            assert await server.start() > 0
        finally:
            await server.stop()
        assert machine.scenario == name


def plc_sim_command() -> list[str]:
    script = Path(sys.executable).with_name("plc-sim")
    assert script.exists(), "the plc-sim console script is not installed in this environment"
    return [str(script)]


def test_help_lists_scenarios_and_ports() -> None:
    result = subprocess.run(
        [*plc_sim_command(), "--help"], capture_output=True, text=True, check=True, timeout=30
    )

    for name in SCENARIOS:
        assert name in result.stdout
    assert "--modbus-port" in result.stdout
    assert "5020" in result.stdout
    assert "modbus-tcp" in result.stdout


def trace_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_plc_sim_process_serves_traces_and_stops_on_signal(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    trace = tmp_path / "trace.jsonl"
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *plc_sim_command(),
            "--scenario",
            "compressor",
            "--modbus-port",
            "0",
            "--speed",
            "20",
            "--tick-s",
            "0.05",
            "--trace",
            str(trace),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert line, stderr_path.read_text()
        listening = json.loads(line)
        assert listening == {
            "event": "listening",
            "scenario": "compressor",
            "protocol": "modbus-tcp",
            "host": HOST,
            "port": listening["port"],
            "unit": 1,
            "units": {"1": "compressor"},
            "endpoints": {
                "modbus-tcp": {"protocol": "modbus-tcp", "host": HOST, "port": listening["port"]}
            },
        }
        assert 0 < listening["port"] < 65536

        modbus = AsyncModbusTcpClient(
            HOST, port=listening["port"], timeout=2, retries=0, reconnect_delay=0
        )
        assert await modbus.connect()
        try:
            seen_states: set[int] = set()
            for _ in range(5):
                inputs = await modbus.read_input_registers(0, count=11, device_id=UNIT)
                holding = await modbus.read_holding_registers(100, count=4, device_id=UNIT)
                decoded_inputs = decode_inputs(inputs.registers)
                decoded_holding = decode_holding(holding.registers)
                # Each tick's line is written before its values can be served.
                lines = trace_lines(trace)
                assert {k: decoded_inputs[k] for k in INPUT_FIELDS} in [
                    {k: rec[k] for k in INPUT_FIELDS} for rec in lines
                ]
                assert decoded_holding["operating_s"] in [rec["operating_s"] for rec in lines]
                assert decoded_holding["firmware_version"] == FIRMWARE_VERSION
                seen_states.add(int(decoded_inputs["state"]))
                await asyncio.sleep(0.1)
        finally:
            modbus.close()

        count_now = len(trace_lines(trace))

        async def trace_grows() -> bool:
            return len(trace_lines(trace)) >= count_now + 5

        await wait_until_async(trace_grows, timeout_s=10.0,
                               what="the trace to grow by five ticks")
        record = trace_lines(trace)[-1]
        assert abs(record["time_ns"] - time.time_ns()) < 10 * 1_000_000_000
        assert seen_states <= {0, 1, 2}

        sent_at = time.monotonic()
        proc.send_signal(stop_signal)
        returncode = await asyncio.wait_for(proc.wait(), timeout=10)
        elapsed = time.monotonic() - sent_at
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert returncode == 0, stderr_path.read_text()
    assert elapsed < 5.0, "SIGTERM/SIGINT must stop the simulator promptly"
    assert await proc.stdout.read() == b""  # exactly one line on stdout
    for log_line in stderr_path.read_text().splitlines():
        json.loads(log_line)  # stderr is not a TTY: JSON lines only
