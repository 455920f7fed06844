"""The Modbus driver against every fault the simulator can put on the wire, TCP and RTU.

Each fault must come out as the right kind of `DeviceError` (its reason is what the
health event and the log line say), and a dead slave on a shared RS-485 bus must not
stall the healthy one beside it. The RTU bus is a pseudo-terminal pair (plc_sim.pty_bus).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.acquire.backoff import Backoff
from agent.acquire.task import DeviceHealth, supervise_device
from agent.events import DEVICE_HEALTH, Event
from agent.supervisor.tasks import cancel_and_wait
from agent.testing import RecordingDetector, wait_until_async
from drivers.errors import (
    DeviceError,
    DeviceException,
    DeviceTimeout,
    DeviceUnreachable,
    ProtocolError,
)
from drivers.modbus import ModbusDriver, ModbusRtuDevice, ModbusRtuTcpDevice, ModbusTcpDevice
from drivers.modbus.config import ModbusDevice
from drivers.samples import SampleBatch
from plc_sim.compressor import Compressor
from plc_sim.compressor_modbus import served_compressor
from plc_sim.link_faults import Fault
from plc_sim.meter_modbus import served_meter
from plc_sim.meters import Meter
from plc_sim.modbus_server import ModbusSimServer, SerialLine, ServedMachine

HOST = "127.0.0.1"
TIMEOUT_S = 0.3
STATE = [{"name": "state", "register": 30009, "type": "uint16"}]
VOLTAGE = [{"name": "voltage_l1_v", "register": 30001, "type": "float32"}]


def units() -> dict[int, ServedMachine]:
    return {1: served_compressor(Compressor(seed=1)), 2: served_meter("sdm630", Meter(seed=1))}


@pytest.fixture
async def tcp() -> AsyncIterator[tuple[ModbusSimServer, ModbusDevice]]:
    server = ModbusSimServer(units(), host=HOST, port=0)
    port = await server.start()
    config = ModbusTcpDevice.model_validate(
        {"name": "comp", "protocol": "modbus-tcp", "host": HOST, "port": port,
         "timeout_s": TIMEOUT_S, "tags": STATE})
    yield server, config
    await server.stop()


def rtu_device(path: Path, name: str, unit: int, tags: list[dict[str, Any]],
               **extra: Any) -> ModbusRtuDevice:
    return ModbusRtuDevice.model_validate(
        {"name": name, "protocol": "modbus-rtu", "serial_port": str(path), "unit": unit,
         "timeout_s": TIMEOUT_S, "tags": tags, **extra})


@pytest.fixture
async def rtu(tmp_path: Path) -> AsyncIterator[tuple[ModbusSimServer, ModbusDevice]]:
    path = tmp_path / "ttyRS485"
    server = ModbusSimServer(units(), transport="rtu", serial=SerialLine(path))
    await server.start()
    yield server, rtu_device(path, "comp", 1, STATE)
    await server.stop()


async def read_once(config: ModbusDevice) -> SampleBatch:
    driver = ModbusDriver(config)
    try:
        await driver.connect()
        return await driver.read(driver.plans[0])
    finally:
        await driver.close()


@contextlib.asynccontextmanager
async def supervised(pairs: list[tuple[ModbusDriver, RecordingDetector]],
                     backoff: Callable[[], Backoff]) -> AsyncIterator[list[Event]]:
    """Each driver in its own device task, as the supervisor runs it; yields the health
    events they send, and cancels the tasks on the way out."""
    health: list[Event] = []

    def sink(events: Any) -> None:
        health.extend(e for e in events if e.kind == DEVICE_HEALTH)

    tasks = [asyncio.create_task(supervise_device(driver, detector, sink, backoff(),
                                                  DeviceHealth(driver.device)))
             for driver, detector in pairs]
    try:
        yield health
    finally:
        await cancel_and_wait(tasks)  # pymodbus's wait_for may swallow one cancel (3.11)


async def fault_outcome(server: ModbusSimServer, config: ModbusDevice, fault: Fault) -> DeviceError:
    await server.set_fault(fault)
    try:
        with pytest.raises(DeviceError) as caught:
            await read_once(config)
    finally:
        await server.clear_fault()
    # The fault gone, the same device reads again: nothing was left broken.
    assert (await read_once(config)).values.tolist() == [2.0]
    return caught.value


TCP_FAULTS = [
    (Fault("no_answer"), DeviceTimeout, f"no answer within {TIMEOUT_S} s"),
    (Fault("delay", seconds=1.0), DeviceTimeout, "no answer"),
    (Fault("exception", code=4), DeviceException, "exception code 4 (server device failure)"),
    (Fault("exception", code=11), DeviceException, "exception code 11 (gateway target"),
    (Fault("drop"), DeviceUnreachable, "the device closed or reset the connection"),
    (Fault("refuse"), DeviceUnreachable, "connection refused by"),
    (Fault("garbage"), ProtocolError, "an answer that does not fit the request"),
    (Fault("wrong_tid"), ProtocolError, "transaction id 4370, not 1"),
    (Fault("wrong_length"), ProtocolError, "its length field says 7 bytes, 5 came"),
    (Fault("wrong_unit"), ProtocolError, "it comes from unit 2, not 1"),
]


@pytest.mark.parametrize(("fault", "kind", "detail"), TCP_FAULTS, ids=[f[0].kind + str(i) for i, f in enumerate(TCP_FAULTS)])
async def test_each_tcp_fault_is_named_for_what_it_is(
    tcp: tuple[ModbusSimServer, ModbusDevice], fault: Fault, kind: type[DeviceError], detail: str,
) -> None:
    error = await fault_outcome(*tcp, fault)
    assert type(error) is kind, error
    assert detail in error.detail
    assert error.device == "comp"


RTU_FAULTS = [
    (Fault("no_answer"), DeviceTimeout, "no answer"),
    (Fault("exception", code=6), DeviceException, "exception code 6 (server device busy)"),
    (Fault("bad_crc"), ProtocolError, "bad CRC"),
    (Fault("wrong_length"), ProtocolError, "does not fit the request"),
    (Fault("wrong_unit"), ProtocolError, "it comes from unit 2, not 1"),
]


@pytest.mark.parametrize(("fault", "kind", "detail"), RTU_FAULTS, ids=[f[0].kind for f in RTU_FAULTS])
async def test_each_rtu_fault_is_named_for_what_it_is(
    rtu: tuple[ModbusSimServer, ModbusDevice], fault: Fault, kind: type[DeviceError], detail: str,
) -> None:
    error = await fault_outcome(*rtu, fault)
    assert type(error) is kind, error
    assert detail in error.detail


async def test_a_slow_device_within_its_timeout_is_read(tcp: tuple[ModbusSimServer, ModbusDevice]) -> None:
    server, config = tcp
    await server.set_fault(Fault("delay", seconds=TIMEOUT_S / 2))
    assert (await read_once(config)).values.tolist() == [2.0]


async def test_a_missing_serial_port_is_named() -> None:
    config = rtu_device(Path("/dev/ttyUSB-not-there"), "m", 1, STATE)
    with pytest.raises(DeviceUnreachable, match="serial port /dev/ttyUSB-not-there does not exist"):
        await read_once(config)


async def test_a_dead_slave_does_not_stall_the_other_on_the_same_bus(tmp_path: Path) -> None:
    path = tmp_path / "ttyRS485"
    server = ModbusSimServer(units(), transport="rtu", serial=SerialLine(path))
    await server.start()
    comp = rtu_device(path, "comp", 1, STATE, poll_interval_s=0.05)
    meter = rtu_device(path, "meter", 2, VOLTAGE, poll_interval_s=0.05)
    counts = {"comp": RecordingDetector(), "meter": RecordingDetector()}
    await server.set_fault(Fault("no_answer", unit=2))
    pairs = [(ModbusDriver(config), counts[config.name]) for config in (comp, meter)]
    try:
        async with supervised(pairs, lambda: Backoff(initial_s=0.5, max_s=2.0)) as health, \
                asyncio.timeout(20):
            await wait_until_async(lambda: any(e.device == "meter" for e in health),
                                   timeout_s=10, what="the dead slave reported")
            start = len(counts["comp"].batches)
            await asyncio.sleep(2.0)  # a measured interval, not a wait for a condition
            during = len(counts["comp"].batches) - start
            await server.clear_fault()
            await wait_until_async(lambda: len(counts["meter"].batches) > 0, timeout_s=10,
                                   what="the slave read again once the fault is gone")
    finally:
        await server.stop()
    # 40 polls in 2 s at most; the dead slave's timeouts (0.3 s, at most every 0.25-2 s of
    # backoff) may take some of the bus's time, never all of it.
    assert during >= 15, during
    meter_health = [(e.data["status"], e.data["reason"]) for e in health if e.device == "meter"]
    assert meter_health == [("down", "timeout"), ("up", "")]
    assert [e.data["status"] for e in health if e.device == "comp"] == ["up"]


def shared_endpoint_devices(transport: str, where: dict[str, Any]) -> list[ModbusDevice]:
    """Unit 1 (the compressor) and unit 2 (the meter) as two devices behind one endpoint."""
    protocol = {"tcp": "modbus-tcp", "rtu-tcp": "modbus-rtu-tcp", "rtu": "modbus-rtu"}[transport]
    cls = {"tcp": ModbusTcpDevice, "rtu-tcp": ModbusRtuTcpDevice, "rtu": ModbusRtuDevice}[transport]
    return [
        cls.model_validate({"name": name, "protocol": protocol, "unit": unit, "tags": tags,
                            "timeout_s": TIMEOUT_S, "poll_interval_s": 0.05, **where})
        for name, unit, tags in (("comp", 1, STATE), ("meter", 2, VOLTAGE))
    ]


FRAME_FAULTS_OF_UNIT_1 = [
    ("tcp", "garbage"), ("tcp", "wrong_length"), ("tcp", "wrong_tid"),
    ("rtu-tcp", "bad_crc"), ("rtu-tcp", "garbage"), ("rtu", "bad_crc"), ("rtu", "garbage"),
]


@pytest.mark.parametrize(("transport", "kind"), FRAME_FAULTS_OF_UNIT_1,
                         ids=[f"{t}-{k}" for t, k in FRAME_FAULTS_OF_UNIT_1])
async def test_a_bad_frame_is_the_fault_of_its_sender_only(
    tmp_path: Path, transport: str, kind: str, caplog: pytest.LogCaptureFixture,
) -> None:
    if transport == "rtu":
        path = tmp_path / "ttyRS485"
        server = ModbusSimServer(units(), transport="rtu", serial=SerialLine(path))
        await server.start()
        where: dict[str, Any] = {"serial_port": str(path)}
    else:
        server = ModbusSimServer(units(), host=HOST, port=0, transport=transport)  # type: ignore[arg-type]
        where = {"host": HOST, "port": await server.start()}
    comp, meter = shared_endpoint_devices(transport, where)
    counts = {"comp": RecordingDetector(), "meter": RecordingDetector()}
    pairs = [(ModbusDriver(config), counts[config.name]) for config in (comp, meter)]
    try:
        async with supervised(pairs, lambda: Backoff(initial_s=0.2, max_s=1.0)) as health, \
                asyncio.timeout(30):
            await wait_until_async(lambda: len(counts["meter"].batches) > 3, timeout_s=10,
                                   what="the meter read before the fault")
            await server.set_fault(Fault(kind, unit=1))  # type: ignore[arg-type]
            await wait_until_async(lambda: any(e.device == "comp" for e in health[1:]),
                                   timeout_s=10, what="the faulty unit reported")
            start = len(counts["meter"].batches)
            await wait_until_async(lambda: len(counts["meter"].batches) >= start + 30,
                                   timeout_s=15, what="the meter read on through the fault")
            await server.clear_fault()
    finally:
        await server.stop()
    comp_health = [(e.data["status"], e.data["reason"]) for e in health if e.device == "comp"]
    assert comp_health[:2] == [("up", ""), ("down", "protocol_error")], comp_health
    assert [e.data["status"] for e in health if e.device == "meter"] == ["up"]
    # Each fault is one health event, not a library traceback in the log.
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


class AttemptTimes(ModbusDriver):
    """The real driver, noting when each connect is tried (the supervisor's retry schedule)."""

    def __init__(self, config: ModbusDevice) -> None:
        super().__init__(config)
        self.attempts_s: list[float] = []

    async def connect(self) -> None:
        self.attempts_s.append(asyncio.get_running_loop().time())
        await super().connect()


async def test_a_device_answering_exceptions_is_retried_within_a_few_polls(
    tcp: tuple[ModbusSimServer, ModbusDevice],
) -> None:
    server, config = tcp
    poll_s = 0.25
    config = config.model_copy(update={"poll_interval_s": poll_s})
    driver = AttemptTimes(config)
    await server.set_fault(Fault("exception", code=4))
    loop = asyncio.get_running_loop()
    async with supervised([(driver, RecordingDetector())], Backoff) as health:
        # Long enough for the default backoff (1 s doubling to 30 s) to have reached 8-16 s.
        await asyncio.sleep(12.0)  # a measured fault period, not a wait for a condition
        await server.clear_fault()
        cleared_s = loop.time()
        await wait_until_async(lambda: bool(health) and health[-1].data["status"] == "up",
                               timeout_s=40, what="the device up again")
        recovered_s = loop.time() - cleared_s
    gaps = [b - a for a, b in zip(driver.attempts_s, driver.attempts_s[1:], strict=False)]
    assert max(gaps) <= 3 * poll_s + TIMEOUT_S + 0.2, gaps
    assert recovered_s <= 3 * poll_s + 0.5, recovered_s
    assert [e.data["reason"] for e in health] == ["device_exception", ""]
