"""A Modbus line: one connection (a TCP socket or a serial port) shared by every device on it.

Several unit ids behind one TCP gateway, or several slaves on one RS-485 bus, are
separate devices in the configuration but one line on the wire: they share one
pymodbus client, and one transaction at a time crosses the line, followed by the
line's inter-frame delay. A line lives while a device on it is connected.

Only read function codes (1-4) are sent: the agent never writes to a device.
"""

from __future__ import annotations

import asyncio
import os
import termios
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import ExceptionResponse

from drivers.errors import (
    DeviceError,
    DeviceException,
    DeviceTimeout,
    DeviceUnreachable,
    IllegalAddress,
    ProtocolError,
)
from drivers.modbus.config import ModbusDevice, ModbusRtuDevice, ModbusRtuTcpDevice, line_key
from drivers.modbus.plan import Request
from drivers.tcp_diagnosis import why_no_connection

Client = AsyncModbusTcpClient | AsyncModbusSerialClient

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2
GATEWAY_PATH_UNAVAILABLE = 10
GATEWAY_TARGET_FAILED = 11


def describe_line(config: ModbusDevice) -> str:
    if isinstance(config, ModbusRtuDevice):
        return (f"{config.serial_port} ({config.baudrate} {config.byte_size}"
                f"{config.parity}{config.stop_bits})")
    return f"{config.host}:{config.port}"


def _new_client(config: ModbusDevice, trace_packet: Callable[[bool, bytes], bytes]) -> Client:
    # pymodbus's own retries and reconnects are off: the device supervisor owns both.
    common: dict[str, Any] = {"timeout": config.timeout_s, "retries": 0, "reconnect_delay": 0,
                              "name": config.name, "trace_packet": trace_packet}
    if isinstance(config, ModbusRtuDevice):
        return AsyncModbusSerialClient(
            config.serial_port, framer=FramerType.RTU, baudrate=config.baudrate,
            bytesize=config.byte_size, parity=config.parity, stopbits=config.stop_bits, **common,
        )
    framer = FramerType.RTU if isinstance(config, ModbusRtuTcpDevice) else FramerType.SOCKET
    return AsyncModbusTcpClient(config.host, port=config.port, framer=framer, **common)


@dataclass(eq=False)
class Line:
    """One shared connection; `users` counts the devices holding it."""

    key: tuple[Hashable, ...]
    config: ModbusDevice
    """The first device's: it sets the connection and the line settings (validated equal)."""
    inter_frame_delay_s: float
    where: str
    users: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    client: Client = field(init=False)
    received: bytearray = field(default_factory=bytearray)
    """Every byte that arrived during the current transaction: pymodbus drops an answer that
    does not fit the request without a word, so this tells silence from garbage."""

    def __post_init__(self) -> None:
        self.client = _new_client(self.config, self._on_packet)

    def _on_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending and len(self.received) < 512:
            self.received += data
        return data

    async def ensure_connected(self, device: str) -> None:
        """Connect (again) if the connection is down; one device at a time does it."""
        if self.client.connected:
            return
        async with self.lock:
            await self._connect_locked(device)

    async def _connect_locked(self, device: str) -> None:
        """Connect if down; the caller holds the lock, so no other device's transaction can
        drop the connection between this and the request that follows."""
        if self.client.connected:
            return
        if self.key[0] == "rtu":
            _check_serial_port(device, str(self.key[1]))
        try:
            connected = await self.client.connect()
        except OSError as exc:  # DNS failures, a serial port that cannot be opened
            if self.key[0] != "rtu":
                raise DeviceUnreachable(device, await self._why_no_connection()) from exc
            raise DeviceUnreachable(device, f"{self.where}: {exc}") from exc
        except termios.error as exc:  # the port refuses the line settings (e.g. parity)
            raise DeviceUnreachable(
                device, f"{self.where}: the serial port refuses these line settings: {exc}"
            ) from exc
        if not connected:
            if self.key[0] != "rtu":
                raise DeviceUnreachable(device, await self._why_no_connection())
            raise DeviceUnreachable(device, f"cannot open {self.where} (does the serial port "
                                    "exist, and may this user open it: group dialout?)")

    async def _why_no_connection(self) -> str:
        config = self.config
        assert not isinstance(config, ModbusRtuDevice)
        return await why_no_connection(config.host, config.port, config.timeout_s,
                                       server="Modbus TCP server")

    async def read(self, device: str, unit: int, timeout_s: float, request: Request) -> list[int]:
        """The request's registers, or its bits as 0/1; a DeviceError naming device and address."""
        client = self.client
        address = request.describe()
        read: Callable[..., Awaitable[Any]] = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[request.table]
        async with self.lock:
            # Another device on this line may have dropped the connection after garbage or a
            # reset: connect again, under the lock, rather than fail a device that did nothing.
            await self._connect_locked(device)
            # Devices on one line may have different timeouts; the client reads this per request.
            client.ctx.comm_params.timeout_connect = timeout_s
            self.received.clear()
            try:
                response = await read(request.address, count=request.count, device_id=unit)
            except ConnectionException as exc:
                raise DeviceUnreachable(device, f"{self.where}: {exc}", address=address) from exc
            except (TimeoutError, ModbusIOException) as exc:
                if isinstance(exc, ModbusIOException) and "No response" not in str(exc):
                    raise ProtocolError(device, str(exc), address=address) from exc
                raise self._silence(device, unit, timeout_s, address) from exc
            finally:
                if self.inter_frame_delay_s:
                    await asyncio.sleep(self.inter_frame_delay_s)
        if isinstance(response, ExceptionResponse) or response.isError():
            code = int(getattr(response, "exception_code", 0))
            cls: type[DeviceException] = (
                IllegalAddress if code == ILLEGAL_DATA_ADDRESS else DeviceException
            )
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise cls(device, f"exception code {code} ({name}){self._exception_hint(code, unit)}",
                      code=code, address=address)
        if request.table in ("coil", "discrete"):
            # Bits come packed in whole bytes: the answer may hold up to 7 padding bits.
            bits = list(response.bits)
            if len(bits) < request.count or len(bits) >= request.count + 8:
                raise ProtocolError(
                    device, f"asked for {request.count} bits, got {len(bits)}", address=address
                )
            return [int(b) for b in bits[: request.count]]
        words = list(response.registers)
        if len(words) != request.count:
            raise ProtocolError(
                device, f"asked for {request.count} registers, got {len(words)}", address=address
            )
        return words


    def _exception_hint(self, code: int, unit: int) -> str:
        """The setting an exception answer most likely points at."""
        if code in (GATEWAY_PATH_UNAVAILABLE, GATEWAY_TARGET_FAILED):
            return (f": the gateway at {self.where} answers, but no device behind it answers "
                    f"unit {unit}: check `unit` (the device's slave address) and the gateway's "
                    "serial side")
        if code == ILLEGAL_FUNCTION:
            return (": the device does not serve this table: check the register's table "
                    "(holding 4xxxx, input 3xxxx, coil 0xxxx, discrete 1xxxx)")
        return ""

    def _silence(self, device: str, unit: int, timeout_s: float, address: str) -> DeviceError:
        """Why no answer matched: the connection went, bytes came that did not fit, or nothing."""
        if not self.client.connected:
            return DeviceUnreachable(device, f"{self.where}: the device closed or reset the "
                                     "connection", address=address)
        if self.received:
            rtu = self.key[0] != "tcp"
            sent_tid = int(getattr(self.client.ctx, "request_transaction_id", 0))
            what = describe_unfit_answer(bytes(self.received), rtu=rtu, unit=unit, tid=sent_tid)
            return ProtocolError(device, f"an answer that does not fit the request: {what}",
                                 address=address)
        check = ("`unit`, the baud rate, parity and wiring" if self.key[0] == "rtu"
                 else "`unit` (many devices ignore another unit id)")
        return DeviceTimeout(device, f"no answer within {timeout_s} s: check {check}, or raise "
                             "`timeout_s` for a slow device", address=address)


def describe_unfit_answer(data: bytes, *, rtu: bool, unit: int, tid: int) -> str:
    """What is wrong with bytes that pymodbus did not take as the answer, in a technician's words."""
    shown = data[:16].hex(" ") + (" ..." if len(data) > 16 else "")
    if rtu:
        if len(data) >= 4 and FramerRTU.compute_CRC(data[:-2]) != int.from_bytes(data[-2:], "big"):
            problem = "bad CRC (noise on the line: termination, cable, baud rate?)"
        elif data and data[0] != unit:
            problem = f"it comes from unit {data[0]}, not {unit} (two slaves with one address?)"
        else:
            problem = "a frame of the wrong length or content"
    elif len(data) >= 7:
        got_tid, length, got_unit = (int.from_bytes(data[0:2], "big"),
                                     int.from_bytes(data[4:6], "big"), data[6])
        if got_tid != tid:
            problem = f"transaction id {got_tid}, not {tid}"
        elif length != len(data) - 6:
            problem = f"its length field says {length} bytes, {len(data) - 6} came"
        elif got_unit != unit:
            problem = f"it comes from unit {got_unit}, not {unit}"
        else:
            problem = "a frame that does not parse"
    else:
        problem = "a frame too short for Modbus TCP"
    return f"{problem} ({len(data)} bytes: {shown})"


def _check_serial_port(device: str, port: str) -> None:
    """Name the two usual reasons a serial port cannot be opened (pymodbus only says it failed)."""
    if not os.path.exists(port):
        raise DeviceUnreachable(
            device, f"serial port {port} does not exist (is the adapter plugged in? "
            "/dev/serial/by-id/ names survive re-plugging)")
    if not os.access(port, os.R_OK | os.W_OK):
        raise DeviceUnreachable(
            device, f"permission denied on {port}: the agent's user must be in group dialout")


_LINES: dict[tuple[Hashable, ...], Line] = {}


def acquire_line(config: ModbusDevice) -> Line:
    """The line this device is on, created on first use (per event loop)."""
    key = (*line_key(config), id(asyncio.get_running_loop()))
    line = _LINES.get(key)
    if line is None:
        delay_s = getattr(config, "inter_frame_delay_s", 0.0)
        line = Line(key, config, delay_s, describe_line(config))
        _LINES[key] = line
    line.users += 1
    return line


def release_line(line: Line) -> None:
    """The device is done with the line; the last one closes it."""
    line.users -= 1
    if line.users <= 0:
        line.client.close()
        if _LINES.get(line.key) is line:
            del _LINES[line.key]


def drop_connection(line: Line) -> None:
    """Close the connection but keep the line: after a reset or garbage, the next read reconnects
    instead of reading the rest of a broken stream."""
    line.client.close()
