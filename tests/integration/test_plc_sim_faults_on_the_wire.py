"""Communication faults of the simulator, seen on the wire by a raw client.

The raw clients (a socket, a pty opened like a serial port) show the bytes as
they are: a bad CRC, a wrong transaction id or an RST must reach the client
unchanged, whatever a Modbus library would make of them. The RTU bus is the pty
pair of `plc_sim.pty_bus`; the process test drives faults through the control
channel, as tests of the agent do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import time
import tty
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.testing import PlcSimControl, port_open, start_plc_sim, stop_process
from plc_sim.compressor import Compressor
from plc_sim.compressor_modbus import served_compressor
from plc_sim.link_faults import Fault, with_crc
from plc_sim.meter_modbus import served_meter
from plc_sim.meters import Meter
from plc_sim.modbus_server import ModbusSimServer, SerialLine, ServedMachine

HOST = "127.0.0.1"
QUIET_S = 0.3
"""How long silence must last to count as "no answer"."""


def units() -> dict[int, ServedMachine]:
    return {1: served_compressor(Compressor(seed=1)), 2: served_meter("sdm630", Meter(seed=1))}


def mbap_request(tid: int, unit: int, function: int, address: int, count: int) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, function, address, count)


def rtu_request(unit: int, function: int, address: int, count: int) -> bytes:
    return with_crc(struct.pack(">BBHH", unit, function, address, count))


class TcpPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> TcpPeer:
        return cls(*await asyncio.open_connection(HOST, port))

    async def ask(self, request: bytes, timeout_s: float = 2.0) -> bytes:
        """Send a request; everything that arrives until a pause of QUIET_S (b"" if nothing)."""
        self.writer.write(request)
        await self.writer.drain()
        data = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(self.reader.read(1024), QUIET_S)
            except TimeoutError:
                if data:
                    break
                continue
            if not chunk:
                break
            data += chunk
        return data

    def close(self) -> None:
        self.writer.close()


class SerialPeer:
    """The client's end of the simulator's pty bus, opened as a program opens a serial port."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)

    async def ask(self, request: bytes, timeout_s: float = 2.0) -> bytes:
        """Send a request; what arrives until a pause of QUIET_S (b"" if nothing by the timeout)."""
        os.write(self.fd, request)
        data = b""
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                chunk = os.read(self.fd, 1024)
                if chunk:
                    data += chunk
                    quiet_since = time.monotonic()
            if data and time.monotonic() - quiet_since > QUIET_S:
                break
            await asyncio.sleep(0.005)
        return data

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
async def tcp() -> AsyncIterator[ModbusSimServer]:
    server = ModbusSimServer(units(), host=HOST, port=0)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def rtu(tmp_path: Path) -> AsyncIterator[ModbusSimServer]:
    server = ModbusSimServer(units(), transport="rtu", serial=SerialLine(tmp_path / "ttyS9"))
    await server.start()
    yield server
    await server.stop()


async def test_delay_holds_the_answer_for_the_given_seconds(tcp: ModbusSimServer) -> None:
    peer = await TcpPeer.connect(tcp.port)
    await tcp.set_fault(Fault("delay", seconds=0.6))
    started = time.monotonic()
    answer = await peer.ask(mbap_request(1, 1, 4, 0, 2))
    delayed_s = time.monotonic() - started
    await tcp.clear_fault()
    started = time.monotonic()
    await peer.ask(mbap_request(2, 1, 4, 0, 2))
    peer.close()

    assert answer[7] == 4 and delayed_s >= 0.6
    assert time.monotonic() - started < 0.6 + QUIET_S


async def test_exception_fault_answers_its_code_in_its_address_range_only(
    tcp: ModbusSimServer,
) -> None:
    peer = await TcpPeer.connect(tcp.port)
    await tcp.set_fault(Fault("exception", code=6, unit=2, table="input", first=70, last=71))
    in_range = await peer.ask(mbap_request(1, 2, 4, 70, 2))
    outside = await peer.ask(mbap_request(2, 2, 4, 0, 2))
    other_unit = await peer.ask(mbap_request(3, 1, 4, 0, 2))
    peer.close()

    assert in_range[7:] == bytes([0x84, 6])
    assert outside[7] == 4 and other_unit[7] == 4


async def test_words_fault_serves_its_raw_values_in_a_valid_answer(tcp: ModbusSimServer) -> None:
    """A sensor fault behind the PLC: the answer is well formed, the register holds 7FFFh."""
    peer = await TcpPeer.connect(tcp.port)
    await tcp.set_fault(Fault.from_json({"fault": "words", "words": [0x7FFF], "unit": 1,
                                         "table": "input", "first": 7}))
    faulty = await peer.ask(mbap_request(2, 1, 4, 6, 3))
    await tcp.clear_fault()
    healthy = await peer.ask(mbap_request(3, 1, 4, 6, 3))
    peer.close()

    assert faulty[7:9] == bytes([4, 6]), "a normal answer of 3 registers"
    served = struct.unpack(">3H", faulty[9:15])
    assert served[1] == 0x7FFF
    assert 0x7FFF not in (served[0], served[2]), "the others as the machine has them"
    assert struct.unpack(">3H", healthy[9:15])[1] != 0x7FFF, "cleared: the machine's value"


async def test_an_unmapped_register_answers_illegal_data_address(tcp: ModbusSimServer) -> None:
    peer = await TcpPeer.connect(tcp.port)
    answer = await peer.ask(mbap_request(1, 2, 4, 400, 2))  # beyond the SDM630's map
    peer.close()

    assert answer[7:] == bytes([0x84, 2])


async def test_tcp_frame_faults_reach_the_client(tcp: ModbusSimServer) -> None:
    peer = await TcpPeer.connect(tcp.port)
    request = mbap_request(0x0A0B, 1, 4, 0, 2)
    good = await peer.ask(request)
    answers = {}
    for kind in ("wrong_tid", "wrong_length", "garbage", "no_answer"):
        await tcp.set_fault(Fault(kind))  # type: ignore[arg-type]
        answers[kind] = await peer.ask(request, timeout_s=1.0)
    peer.close()

    assert good[:2] == b"\x0a\x0b" and struct.unpack(">H", good[4:6])[0] == len(good) - 6
    assert answers["wrong_tid"][:2] != b"\x0a\x0b" and answers["wrong_tid"][2:] == good[2:]
    assert struct.unpack(">H", answers["wrong_length"][4:6])[0] != len(good) - 6
    assert len(answers["garbage"]) == len(good) and answers["garbage"] != good
    assert answers["no_answer"] == b""


async def test_drop_resets_the_connection_and_the_next_one_is_served(tcp: ModbusSimServer) -> None:
    peer = await TcpPeer.connect(tcp.port)
    await tcp.set_fault(Fault("drop", times=1))
    peer.writer.write(mbap_request(1, 1, 4, 0, 2))
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(peer.reader.read(1024), 2.0)
    peer.close()

    again = await TcpPeer.connect(tcp.port)
    answer = await again.ask(mbap_request(2, 1, 4, 0, 2))
    again.close()
    assert answer[7] == 4


async def test_refuse_closes_the_port_until_cleared(tcp: ModbusSimServer) -> None:
    port = tcp.port
    await tcp.set_fault(Fault("refuse"))
    with pytest.raises(ConnectionRefusedError):
        await TcpPeer.connect(port)

    await tcp.clear_fault()
    peer = await TcpPeer.connect(port)
    answer = await peer.ask(mbap_request(1, 1, 4, 0, 2))
    peer.close()
    assert answer[7] == 4 and tcp.port == port


async def test_rtu_bus_answers_only_the_addressed_unit(rtu: ModbusSimServer) -> None:
    peer = SerialPeer(str(rtu.describe()["serial_port"]))
    meter = await peer.ask(rtu_request(2, 4, 0, 2))
    nobody = await peer.ask(rtu_request(9, 4, 0, 2), timeout_s=1.0)
    machine = await peer.ask(rtu_request(1, 4, 0, 2))
    peer.close()

    assert meter[:3] == bytes([2, 4, 4]) and with_crc(meter[:-2]) == meter
    assert nobody == b""
    assert machine[:3] == bytes([1, 4, 4]) and with_crc(machine[:-2]) == machine


async def test_rtu_bad_crc_and_wrong_unit(rtu: ModbusSimServer) -> None:
    peer = SerialPeer(str(rtu.describe()["serial_port"]))
    await rtu.set_fault(Fault("bad_crc", times=1))
    bad = await peer.ask(rtu_request(1, 4, 0, 2))
    await rtu.set_fault(Fault("wrong_unit", times=1))
    other = await peer.ask(rtu_request(1, 4, 0, 2))
    good = await peer.ask(rtu_request(1, 4, 0, 2))
    peer.close()

    assert bad[:-2] == good[:-2] and with_crc(bad[:-2]) != bad
    assert other[0] == 2 and with_crc(other[:-2]) == other
    assert with_crc(good[:-2]) == good


def test_plc_sim_process_announces_every_endpoint_and_takes_faults(tmp_path: Path) -> None:
    link = tmp_path / "ttyBUS"
    process, info = start_plc_sim(
        "--meter", "em24@5", "--rtu-tcp-port", "0", "--rtu", str(link), "--baudrate", "19200",
        "--control-port", "0",
    )
    try:
        endpoints = info["endpoints"]
        assert info["units"] == {"1": "compressor", "5": "em24"}
        assert endpoints["modbus-tcp"]["port"] == info["port"]
        assert port_open(HOST, endpoints["modbus-rtu-tcp"]["port"])
        assert endpoints["modbus-rtu"] == {
            "protocol": "modbus-rtu", "serial_port": str(link), "baudrate": 19200,
            "parity": "N", "stop_bits": 1, "byte_size": 8,
        }
        assert link.is_symlink()
        with PlcSimControl.of(info) as control:
            answer = control.set_fault("refuse", endpoint="modbus-tcp")
            assert answer["endpoints"] == ["modbus-tcp"]
            assert not port_open(HOST, info["port"])
            assert port_open(HOST, endpoints["modbus-rtu-tcp"]["port"])
            with pytest.raises(ValueError, match="no endpoint 'modbus-udp'"):
                control.set_fault("delay", seconds=1, endpoint="modbus-udp")
            control.clear()
            assert port_open(HOST, info["port"])
            with pytest.raises(ValueError, match="serves no OPC UA"):
                control.opcua("drop_publish_responses")
    finally:
        assert stop_process(process) == 0
    assert not link.exists()  # the symlink goes with the simulator
    assert json.dumps(info)  # the line is plain JSON
