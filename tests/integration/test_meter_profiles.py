"""Every meter profile read through the agent's Modbus driver from the simulated meter.

The device is what a technician writes, `{profile: NAME, host, port, unit}`; every
tag the profile brings must decode to the value the simulator's model serves. The
simulator encodes with its own encoder, the agent decodes with its codec: a byte
order, scale or address mistake on either side fails here. The model is held still
(no clock), so the comparison is exact up to float32 rounding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus import ModbusDriver, ModbusRtuDevice, ModbusRtuTcpDevice, ModbusTcpDevice
from drivers.modbus.config import ModbusDevice
from plc_sim.meter_modbus import METER_KINDS, served_meter, served_readings
from plc_sim.meters import Meter
from plc_sim.modbus_server import ModbusSimServer, SerialLine, ServedMachine, Transport

HOST = "127.0.0.1"
KINDS = sorted(METER_KINDS)


def device_for(server: ModbusSimServer, name: str, profile: str, unit: int) -> ModbusDevice:
    """The device a technician would configure for this endpoint."""
    common: dict[str, Any] = {"name": name, "profile": profile, "unit": unit, "timeout_s": 2.0}
    if server.transport == "rtu":
        port = server.describe()["serial_port"]
        return ModbusRtuDevice.model_validate(
            {**common, "protocol": "modbus-rtu", "serial_port": port, "baudrate": 19200}
        )
    if server.transport == "rtu-tcp":
        return ModbusRtuTcpDevice.model_validate(
            {**common, "protocol": "modbus-rtu-tcp", "host": HOST, "port": server.port}
        )
    return ModbusTcpDevice.model_validate(
        {**common, "protocol": "modbus-tcp", "host": HOST, "port": server.port}
    )


async def read_through_agent(device: ModbusDevice) -> dict[str, float | str | None]:
    driver = ModbusDriver(device)
    await driver.connect()
    try:
        values: dict[str, float | str | None] = {}
        for plan in driver.plans:
            for reading in await driver.read_group(plan.name):
                assert reading.error is None, reading.error
                values[reading.tag.name] = reading.value
        return values
    finally:
        await driver.close()


def meter_machine(kind: str, meter: Meter) -> ServedMachine:
    return served_meter(kind, meter)


def assert_same_values(read: Mapping[str, object], served: Mapping[str, float]) -> None:
    assert set(read) == set(served)
    for name, expected in served.items():
        assert read[name] == pytest.approx(expected, rel=1e-6, abs=1e-9), name


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Any]:
    servers: list[ModbusSimServer] = []

    async def start(units: Mapping[int, ServedMachine], transport: Transport) -> ModbusSimServer:
        serial = SerialLine(tmp_path / "ttyRS485", baudrate=19200)
        server = ModbusSimServer(units, host=HOST, port=0, transport=transport, serial=serial)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.mark.parametrize("kind", KINDS)
async def test_every_profile_tag_reads_the_simulated_meter_over_tcp(serve: Any, kind: str) -> None:
    meter = Meter(seed=3)
    meter.advance(37.0)  # away from the round initial values
    server = await serve({2: meter_machine(kind, meter)}, "tcp")

    read = await read_through_agent(device_for(server, "m1", METER_KINDS[kind].profile, 2))

    assert_same_values(read, served_readings(METER_KINDS[kind], meter.state))
    assert 15 <= len(read) <= 30


async def test_three_meters_on_one_rtu_bus_each_answer_at_their_unit(serve: Any) -> None:
    meters = {unit: Meter(seed=unit) for unit in (2, 3, 4)}
    kinds = dict(zip(meters, KINDS, strict=True))
    for meter in meters.values():
        meter.advance(11.0)
    server = await serve({u: meter_machine(kinds[u], m) for u, m in meters.items()}, "rtu")

    for unit, meter in meters.items():
        kind = METER_KINDS[kinds[unit]]
        read = await read_through_agent(device_for(server, f"m{unit}", kind.profile, unit))
        assert_same_values(read, served_readings(kind, meter.state))


async def test_a_profile_reads_over_rtu_over_tcp(serve: Any) -> None:
    meter = Meter(seed=5)
    server = await serve({7: meter_machine("em24", meter)}, "rtu-tcp")

    read = await read_through_agent(device_for(server, "m7", METER_KINDS["em24"].profile, 7))

    assert_same_values(read, served_readings(METER_KINDS["em24"], meter.state))
