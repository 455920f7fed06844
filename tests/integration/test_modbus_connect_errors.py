"""Why a Modbus device cannot be read, told apart: each cause names the setting to check.

Refused, no answer, no route, an unknown host name and a gateway without the unit all
used to read `cannot connect` or a bare exception code. Each is provoked for real: a
port nothing listens on, a listener whose accept queue is full (the kernel drops the
SYN, as a firewall does), a network namespace without routes, the simulator as a gateway.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.testing import free_tcp_port
from drivers.errors import DeviceError, DeviceException, DeviceTimeout, DeviceUnreachable
from drivers.modbus import ModbusDriver, ModbusTcpDevice
from plc_sim.compressor import Compressor
from plc_sim.compressor_modbus import served_compressor
from plc_sim.link_faults import Fault
from plc_sim.modbus_server import ModbusSimServer

HOST = "127.0.0.1"
STATE = [{"name": "state", "register": 30009, "type": "uint16"}]


def device(host: str, port: int, *, unit: int = 1, timeout_s: float = 0.5) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {"name": "press", "protocol": "modbus-tcp", "host": host, "port": port, "unit": unit,
         "timeout_s": timeout_s, "tags": STATE})


async def read_error(config: ModbusTcpDevice) -> DeviceError:
    driver = ModbusDriver(config)
    try:
        with pytest.raises(DeviceError) as caught:
            await driver.connect()
            await driver.read(driver.plans[0])
    finally:
        await driver.close()
    return caught.value


async def test_a_refused_port_says_check_port() -> None:
    error = await read_error(device(HOST, free_tcp_port()))
    assert isinstance(error, DeviceUnreachable)
    assert "connection refused" in error.detail and "check `port`" in error.detail, error.detail


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port whose accept queue is full: further SYNs go unanswered, like a dropped packet."""
    server = socket.socket()
    server.bind((HOST, 0))
    server.listen(0)
    port = server.getsockname()[1]
    held = socket.create_connection((HOST, port), timeout=1)
    try:
        yield port
    finally:
        held.close()
        server.close()


async def test_a_host_that_never_answers_says_check_host() -> None:
    with silent_listener() as port:
        error = await read_error(device(HOST, port, timeout_s=0.3))
    assert isinstance(error, DeviceUnreachable)
    assert "no answer from" in error.detail and "check `host`" in error.detail, error.detail


async def test_an_unknown_host_name_says_it_does_not_resolve() -> None:
    error = await read_error(device("no-such-plc.invalid", 502))
    assert isinstance(error, DeviceUnreachable)
    assert "cannot resolve host name 'no-such-plc.invalid'" in error.detail, error.detail


async def test_a_gateway_without_the_unit_says_check_unit() -> None:
    server = ModbusSimServer({1: served_compressor(Compressor(seed=1))}, host=HOST, port=0)
    port = await server.start()
    try:
        error = await read_error(device(HOST, port, unit=7))
    finally:
        await server.stop()
    assert isinstance(error, DeviceException) and error.code == 11
    assert "check `unit`" in error.detail and "unit 7" in error.detail, error.detail


@pytest.fixture
def empty_netns() -> Iterator[str]:
    """A network namespace with only loopback: every other address has no route."""
    name = f"edge-test-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], check=False, capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_no_route_says_check_the_gateways_own_network(empty_netns: str) -> None:
    script = (
        "import asyncio, sys\n"
        "sys.path[:0] = sys.argv[1:]\n"
        "from drivers.modbus import ModbusDriver, ModbusTcpDevice\n"
        "config = ModbusTcpDevice.model_validate({'name': 'press', 'protocol': 'modbus-tcp',\n"
        "    'host': '10.1.2.3', 'port': 502, 'timeout_s': 0.5,\n"
        "    'tags': [{'name': 'state', 'register': 30009, 'type': 'uint16'}]})\n"
        "async def main():\n"
        "    driver = ModbusDriver(config)\n"
        "    try:\n"
        "        await driver.connect()\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
        "asyncio.run(main())\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        ["ip", "netns", "exec", empty_netns, sys.executable, "-c", script, str(root),
         str(root / "firmware-sim")],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("DeviceUnreachable"), out.stdout
    assert "no route to 10.1.2.3:502" in out.stdout and "netmask" in out.stdout, out.stdout


async def test_a_unit_that_does_not_answer_says_check_unit() -> None:
    server = ModbusSimServer({1: served_compressor(Compressor(seed=1))}, host=HOST, port=0)
    port = await server.start()
    try:
        await server.set_fault(Fault("no_answer"))
        error = await read_error(device(HOST, port, timeout_s=0.3))
    finally:
        await server.stop()
    assert isinstance(error, DeviceTimeout)
    assert "check `unit`" in error.detail and "`timeout_s`" in error.detail, error.detail
