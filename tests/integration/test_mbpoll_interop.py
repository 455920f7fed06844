"""Interoperability: mbpoll (libmodbus, a Modbus master nobody here wrote) reads the simulator
and gets the values the agent's driver reads.

Three independent implementations meet: the simulator's encoder, libmodbus's
decoding as mbpoll prints it, and the agent's codec. A TCP meter (float32, high
word first: mbpoll's `-B`) and an RTU meter on the pty bus (int32 low word first:
mbpoll's default word order, and int16) are compared tag by tag. The model is
held still, so all three see the same state. mbpoll prints floats to 6
significant digits; integers compare exactly.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from drivers.modbus import ModbusDriver, ModbusRtuDevice, ModbusTcpDevice
from drivers.modbus.config import ModbusDevice
from plc_sim.meter_modbus import METER_KINDS, MeterRegister, served_meter
from plc_sim.meters import Meter
from plc_sim.modbus_server import ModbusSimServer, SerialLine

HOST = "127.0.0.1"
VALUE_LINE = re.compile(r"^\[(\d+)\]:\s+(\S+)\s*$", re.MULTILINE)


@pytest.fixture(scope="module")
def mbpoll() -> str:
    """The mbpoll binary, installed from Debian's packages if absent (as `make mbpoll` does)."""
    found = shutil.which("mbpoll")
    if found is not None:
        return found
    install = ["apt-get", "install", "-y", "-qq", "mbpoll"]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            pytest.skip("mbpoll is not installed and there is no root or sudo to install it")
        install = ["sudo", "-n", *install]
    result = subprocess.run(install, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:  # a stale package index: refresh it once
        update = [*install[: install.index("apt-get") + 1], "update", "-qq"]
        subprocess.run(update, capture_output=True, timeout=600, check=False)
        result = subprocess.run(install, capture_output=True, text=True, timeout=600, check=False)
    found = shutil.which("mbpoll")
    if found is None:
        pytest.skip(f"mbpoll could not be installed: {result.stderr.strip()[-300:]}")
    return found


async def run_mbpoll(binary: str, *args: str) -> dict[int, str]:
    """One poll (`-1`) with PDU addressing (`-0`): zero-based address -> printed value."""
    process = await asyncio.create_subprocess_exec(
        binary, "-1", "-0", "-o", "2", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, (args, out.decode(), err.decode())
    return {int(address): value for address, value in VALUE_LINE.findall(out.decode())}


async def read_through_agent(device: ModbusDevice) -> dict[str, float | str | None]:
    driver = ModbusDriver(device)
    await driver.connect()
    try:
        readings = [r for plan in driver.plans for r in await driver.read_group(plan.name)]
    finally:
        await driver.close()
    assert all(r.error is None for r in readings)
    return {r.tag.name: r.value for r in readings}


def by_type(registers: Sequence[MeterRegister], *types: str) -> list[MeterRegister]:
    return [r for r in registers if r.type in types]


@pytest.fixture
async def meters(tmp_path: Path) -> AsyncIterator[tuple[ModbusSimServer, ModbusSimServer]]:
    sdm, em24 = Meter(seed=21), Meter(seed=22)
    sdm.advance(42.0)
    em24.advance(42.0)
    tcp = ModbusSimServer(served_meter("sdm630", sdm), host=HOST, port=0, unit=2)
    rtu = ModbusSimServer(
        {3: served_meter("em24", em24)}, transport="rtu",
        serial=SerialLine(tmp_path / "ttyMB", baudrate=19200),
    )
    await tcp.start()
    await rtu.start()
    yield tcp, rtu
    await tcp.stop()
    await rtu.stop()


async def test_mbpoll_reads_the_sdm630_over_tcp_as_the_agent_does(
    mbpoll: str, meters: tuple[ModbusSimServer, ModbusSimServer]
) -> None:
    tcp, _ = meters
    kind = METER_KINDS["sdm630"]
    common = ("-m", "tcp", "-p", str(tcp.port), "-a", "2", "-t", "3:float", "-B")
    printed = await run_mbpoll(mbpoll, *common, "-r", "0", "-c", "40", HOST)
    printed |= await run_mbpoll(mbpoll, *common, "-r", "200", "-c", "13", HOST)
    agent = await read_through_agent(ModbusTcpDevice.model_validate(
        {"name": "sdm", "protocol": "modbus-tcp", "host": HOST, "port": tcp.port, "unit": 2,
         "profile": kind.profile}
    ))

    for register in kind.registers:
        assert float(printed[register.address]) == pytest.approx(
            agent[register.name], rel=1e-5, abs=1e-6
        ), register.name


async def test_mbpoll_reads_the_em24_on_the_rtu_bus_as_the_agent_does(
    mbpoll: str, meters: tuple[ModbusSimServer, ModbusSimServer]
) -> None:
    _, rtu = meters
    kind = METER_KINDS["em24"]
    port = str(rtu.describe()["serial_port"])
    line = ("-m", "rtu", "-b", "19200", "-P", "none", "-a", "3")
    int32 = await run_mbpoll(mbpoll, *line, "-t", "4:int", "-r", "0", "-c", "41", port)
    int16 = await run_mbpoll(mbpoll, *line, "-t", "4", "-r", "46", "-c", "6", port)
    agent = await read_through_agent(ModbusRtuDevice.model_validate(
        {"name": "em24", "protocol": "modbus-rtu", "serial_port": port, "baudrate": 19200,
         "unit": 3, "profile": kind.profile}
    ))

    for register in by_type(kind.registers, "int32"):
        assert int(int32[register.address]) * register.scale == agent[register.name], register.name
    for register in by_type(kind.registers, "int16"):
        assert int(int16[register.address]) * register.scale == agent[register.name], register.name
    assert len(by_type(kind.registers, "int32", "int16")) == len(kind.registers)
