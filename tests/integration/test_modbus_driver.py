"""The Modbus driver against the simulated compressor over real TCP sockets.

The model is held still (in-process server), so every value read through the driver
can be compared exactly with what the simulator serves, encoded by its own encoder.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import pytest

from agent.acquire.task import DeviceHealth, supervise_device
from agent.events import DEVICE_HEALTH, Event
from agent.supervisor.tasks import cancel_and_wait
from agent.testing import RecordingDetector, wait_until_async
from drivers.errors import IllegalAddress
from drivers.modbus import ModbusDriver, ModbusTcpDevice
from drivers.modbus.line import _LINES
from drivers.samples import Quality
from plc_sim.compressor import Compressor
from plc_sim.compressor_modbus import FIRMWARE_VERSION, served_compressor, served_readings
from plc_sim.modbus_server import ModbusSimServer

HOST = "127.0.0.1"

COMPRESSOR_TAGS: list[dict[str, Any]] = [
    {"name": "motor_current_a", "register": 30001, "type": "float32", "unit": "A"},
    {"name": "active_power_w", "register": 30003, "type": "float32", "unit": "W"},
    {"name": "energy_wh", "register": 30005, "type": "uint32", "unit": "Wh", "counter": True},
    {"name": "discharge_pressure_bar", "register": 30007, "type": "int16", "scale": 0.01},
    {"name": "discharge_temp_c", "register": 30008, "type": "int16", "scale": 0.1},
    {"name": "state", "register": 30009, "type": "uint16"},
    {"name": "state_bit1", "register": 30009, "type": "bool", "bit": 1},
    {"name": "operating_s", "table": "holding", "address": 100, "type": "uint32",
     "byte_order": "CDAB", "poll_group": "slow"},
    {"name": "firmware", "register": 40103, "type": "string", "length_registers": 1,
     "poll_group": "slow"},
    {"name": "fw_bit0", "register": 40103, "type": "bool", "bit": 0, "poll_group": "slow"},
    {"name": "fw_bit0_swapped", "register": 40103, "type": "bool", "bit": 0, "byte_order": "BADC",
     "poll_group": "slow"},
]


@pytest.fixture
async def compressor_port() -> AsyncIterator[tuple[Compressor, int]]:
    compressor = Compressor(seed=1)
    server = ModbusSimServer(served_compressor(compressor), host=HOST, port=0, unit=1)
    port = await server.start()
    try:
        yield compressor, port
    finally:
        await server.stop()


def device(port: int, tags: list[dict[str, Any]], **extra: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {"name": "comp", "protocol": "modbus-tcp", "host": HOST, "port": port, "timeout_s": 2,
         "poll_groups": {"slow": 10}, "tags": tags, **extra}
    )


async def test_every_tag_reads_exactly_what_the_simulator_serves(
    compressor_port: tuple[Compressor, int],
) -> None:
    compressor, port = compressor_port
    driver = ModbusDriver(device(port, COMPRESSOR_TAGS))
    await driver.connect()
    try:
        default, slow = driver.plans
        fast_batch = await driver.read(default)
        slow_batch = await driver.read(slow)
    finally:
        await driver.close()
    expected = asdict(served_readings(compressor.state))
    got = dict(zip(fast_batch.tags, fast_batch.values.tolist(), strict=True))
    got |= dict(zip(slow_batch.tags, slow_batch.values.tolist(), strict=True))
    assert got == {
        "motor_current_a": expected["motor_current_a"],
        "active_power_w": expected["active_power_w"],
        "energy_wh": expected["energy_wh"],
        "discharge_pressure_bar": expected["discharge_pressure_bar"],
        "discharge_temp_c": expected["discharge_temp_c"],
        "state": expected["state"],
        "state_bit1": float((expected["state"] >> 1) & 1),
        "operating_s": expected["operating_s"],
        # 0x0102: bit 0 clear; with its bytes swapped (0x0201) bit 0 is set.
        "fw_bit0": 0.0,
        "fw_bit0_swapped": 1.0,
    }
    assert (fast_batch.quality == Quality.GOOD).all()
    assert slow_batch.texts == {"firmware": bytes([FIRMWARE_VERSION >> 8, FIRMWARE_VERSION & 255]).decode("latin-1")}
    # One request per poll group: registers 0..8, and 100..102.
    assert [(r.table, r.address, r.count) for p in driver.plans for r in p.requests] == [
        ("input", 0, 9), ("holding", 100, 3)
    ]


SPARE = {"name": "spare", "register": 30012, "type": "uint16"}  # input 11: not in the map


async def test_a_refused_address_splits_the_request_and_the_other_tags_go_on(
    compressor_port: tuple[Compressor, int],
) -> None:
    _, port = compressor_port
    driver = ModbusDriver(device(port, [*COMPRESSOR_TAGS[:6], SPARE]))
    await driver.connect()
    try:
        (plan, *_) = driver.plans
        assert [(r.address, r.count) for r in plan.requests] == [(0, 12)]
        first = await driver.read(plan)
        second = await driver.read(plan)
    finally:
        await driver.close()
    for batch in (first, second):
        values = dict(zip(batch.tags, batch.values.tolist(), strict=True))
        quality = dict(zip(batch.tags, batch.quality.tolist(), strict=True))
        assert math.isnan(values.pop("spare"))
        assert quality.pop("spare") == Quality.BAD
        assert set(quality.values()) == {Quality.GOOD}
        assert values["state"] == 2.0
    assert list(driver.tag_errors) == ["spare"]
    error = driver.tag_errors["spare"]
    assert isinstance(error, IllegalAddress)
    assert "register 30012 = input 11" in error.detail


async def test_a_refused_tag_is_reported_once_as_degraded(
    compressor_port: tuple[Compressor, int],
) -> None:
    _, port = compressor_port
    config = device(port, [*COMPRESSOR_TAGS[:6], SPARE], poll_interval_s=0.02)
    events: list[Event] = []
    seen = RecordingDetector()
    status = DeviceHealth("comp")
    task = asyncio.create_task(
        supervise_device(ModbusDriver(config), seen, events.extend, status=status)
    )
    try:
        await wait_until_async(lambda: len(seen.batches) >= 10, timeout_s=10,
                               what="ten batches")
    finally:
        await cancel_and_wait([task])  # pymodbus's wait_for may swallow one cancel (3.11)
    health = [e.data for e in events if e.kind == DEVICE_HEALTH]
    assert len(health) == 1, health
    assert health[0]["status"] == "degraded"
    assert health[0]["reason"] == "illegal_address"
    assert "tag spare" in str(health[0]["detail"])
    assert status.status == "degraded"


async def test_devices_behind_one_endpoint_share_one_connection(
    compressor_port: tuple[Compressor, int],
) -> None:
    compressor, port = compressor_port
    first = ModbusDriver(device(port, COMPRESSOR_TAGS[:2]))
    second = ModbusDriver(device(port, COMPRESSOR_TAGS[5:6], name="comp-state"))
    await first.connect()
    await second.connect()
    try:
        assert len([k for k in _LINES if k[:3] == ("tcp", HOST, str(port))]) == 1
        both = await asyncio.gather(first.read(first.plans[0]), second.read(second.plans[0]))
        assert both[1].values.tolist() == [float(served_readings(compressor.state).state)]
        await first.close()
        # The other device keeps the line open.
        assert (await second.read(second.plans[0])).values.tolist() == [2.0]
    finally:
        await first.close()
        await second.close()
    assert not [k for k in _LINES if k[:3] == ("tcp", HOST, str(port))]
