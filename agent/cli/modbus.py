"""The technician's Modbus commands: `plan`, `read` and `probe`.

`plan` prints what the agent will ask a device for; `read` reads every configured tag
once and shows raw words beside the decoded value, so a wrong address, scale or byte
order shows at once; `probe` reads raw registers from a device that has no configuration
yet and decodes them every way a meter might mean them, to find an undocumented order.
All three only read: the same function codes (1-4) as the agent.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from agent.config.models import AgentConfig
from drivers.errors import DeviceError, DeviceException
from drivers.modbus.codec import decode, decode_string, decode_tag
from drivers.modbus.config import (
    BIT_TABLES,
    ByteOrder,
    ModbusDevice,
    ModbusRtuDevice,
    ModbusRtuTcpDevice,
    ModbusTcpDevice,
    TagType,
    parse_register,
)
from drivers.modbus.describe import describe_device
from drivers.modbus.driver import ModbusDriver, TagReading
from drivers.modbus.line import EXCEPTION_NAMES
from drivers.modbus.plan import plan_device

ORDERS: tuple[ByteOrder, ...] = ("ABCD", "CDAB", "BADC", "DCBA")
_MODBUS = (ModbusTcpDevice, ModbusRtuTcpDevice, ModbusRtuDevice)


def modbus_devices(config: AgentConfig, name: str | None) -> list[ModbusDevice]:
    """The configured Modbus devices, or the one named; ValueError naming the known ones."""
    devices = [d for d in config.devices if isinstance(d, _MODBUS)]
    if name is None:
        return devices
    chosen = [d for d in devices if d.name == name]
    if not chosen:
        known = ", ".join(d.name for d in devices) or "none"
        raise ValueError(f"no Modbus device named {name!r} (configured: {known})")
    return chosen


def print_plan(devices: Sequence[ModbusDevice], out: TextIO) -> None:
    total = 0
    for device in devices:
        plans = plan_device(device)
        for line in describe_device(device, plans):
            print(line, file=out)
        per_second = sum(len(p.requests) / p.interval_s for p in plans)
        total += sum(len(p.requests) for p in plans)
        print(f"  {per_second:.3g} requests/s", file=out)
    print(f"{total} request(s) per cycle of every poll group, {len(devices)} device(s)", file=out)


def format_value(value: float | str | None, type_: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return repr(value)
    if type_ == "float32":
        return f"{value:.7g}"
    if value == int(value) and abs(value) < 2**63:
        return str(int(value))
    return f"{value:.15g}"


def _exact(reading: TagReading, device_order: ByteOrder) -> str | None:
    """A 64-bit integer as the device sent it: the scaled value is a float, which holds only
    53 bits (-1234567890123456789 would print as ...768)."""
    tag = reading.tag
    if tag.type not in ("int64", "uint64") or (tag.scale, tag.offset) != (1.0, 0.0):
        return None
    return str(decode_tag(tag, reading.words, device_order)) if reading.words else None


def _format_error(error: DeviceError) -> str:
    if isinstance(error, DeviceException):  # the address is in its own column
        return f"error: exception code {error.code} ({EXCEPTION_NAMES.get(error.code, 'unknown')})"
    return f"error: {error.detail}"


def _format_words(reading: TagReading) -> str:
    if reading.tag.is_bit:
        return " ".join(str(w) for w in reading.words)
    return " ".join(f"{w:04x}" for w in reading.words)


async def read_device(device: ModbusDevice) -> tuple[list[TagReading], DeviceError | None]:
    """Every tag of the device once, in plan order; a device that fails gives its error."""
    driver = ModbusDriver(device)
    readings: list[TagReading] = []
    try:
        await driver.connect()
        for plan in driver.plans:
            readings.extend(await driver.read_group(plan.name))
    except DeviceError as exc:
        return readings, exc
    finally:
        await driver.close()
    return readings, None


TINY = 1e-20
"""Below this (and not zero) a multi-register float is no measurement: a wrong word order
turns 230 V (0x4366 0x0000) into 2.4e-41."""


def implausible(reading: TagReading) -> str | None:
    """Why the value cannot be a reading: outside its tag's `valid_range` (the agent takes it
    as BAD), or a float too tiny to be a measurement; None when it looks right."""
    tag, value = reading.tag, reading.value
    if reading.error is not None or not isinstance(value, float):
        return None
    if tag.valid_range is not None and not tag.valid_range[0] <= value <= tag.valid_range[1]:
        return f"OUTSIDE {tag.valid_range[0]:g}..{tag.valid_range[1]:g}"
    if tag.type in ("float32", "float64") and 0 < abs(value) < TINY:
        return "IMPLAUSIBLY SMALL"
    return None


def plausible_orders(reading: TagReading, device_order: ByteOrder) -> list[ByteOrder]:
    """The other byte orders in which the reading's words give a plausible value."""
    tag = reading.tag
    if tag.register_count < 2 or tag.type == "string":
        return []
    here = tag.byte_order or device_order
    found: list[ByteOrder] = []
    for order in ORDERS:
        if order == here:
            continue
        value = float(decode(reading.words, tag.type, order)) * tag.scale + tag.offset
        if implausible(replace(reading, value=value)) is None and math.isfinite(value):
            found.append(order)
    return found


def range_advice(device: ModbusDevice, readings: Sequence[TagReading]) -> str | None:
    """One line for implausible values, naming a byte order that would fix every one: a wrong
    order decodes as a finite number far off (`6.100554e+10 V`, `2.4178e-41 V`)."""
    suspects = [r for r in readings if implausible(r) is not None]
    if not suspects:
        return None
    shown = ", ".join(f"{r.tag.name} {format_value(r.value, r.tag.type)}"
                      + (f" {r.tag.unit}" if r.tag.unit else "") for r in suspects[:4])
    more = f" and {len(suspects) - 4} more" if len(suspects) > 4 else ""
    line = (f"device {device.name}: {len(suspects)} implausible value(s), outside their "
            f"valid_range (taken as BAD by the agent) or too small to be readings: {shown}{more}")
    common = set(ORDERS)
    for r in suspects:
        common &= set(plausible_orders(r, device.byte_order))
    if common:
        order = next(o for o in ORDERS if o in common)
        return line + f"; with byte_order: {order} every one of them is plausible"
    return line + ("; no byte order makes them plausible: check the register, the table, "
                   "the type and the scale")


def print_readings(device: ModbusDevice, readings: list[TagReading], out: TextIO) -> None:
    rows = [("tag", "address", "raw", "value", "unit")]
    for r in readings:
        value = (_format_error(r.error) if r.error else _exact(r, device.byte_order)
                 or format_value(r.value, r.tag.type))
        flag = implausible(r)
        if flag is not None:
            value += f" {flag}"
        rows.append((r.tag.name, r.tag.describe_address(), _format_words(r), value, r.tag.unit))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"device {device.name} (unit {device.unit}):", file=out)
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True))
              + f"  {row[4]}".rstrip(), file=out)


async def read_all(devices: Sequence[ModbusDevice], out: TextIO, err: TextIO) -> bool:
    """Read and print each device in turn; False when one could not be read."""
    ok = True
    for device in devices:
        readings, error = await read_device(device)
        if error is not None:
            ok = False
            where = f" at {error.address}" if error.address else ""
            print(f"device {device.name}: {error.reason}{where}: {error.detail}", file=err)
        if readings:
            print_readings(device, readings, out)
        advice = range_advice(device, readings)
        if advice is not None:
            print(advice, file=err)
        refused = [r.tag.name for r in readings if r.error is not None]
        if refused:
            ok = False
            print(f"device {device.name}: {len(refused)} tag(s) refused by the device: "
                  + ", ".join(refused), file=err)
    return ok


# --- probe ---------------------------------------------------------------------------------

def probe_device(url: str, unit: int, timeout_s: float, table: str, address: int, count: int
                 ) -> ModbusDevice:
    """A throw-away device config reading `count` units at `address`, from a URL:
    tcp://HOST:PORT, rtu-tcp://HOST:PORT or rtu:///dev/ttyUSB0?baudrate=9600&parity=E."""
    parts = urlsplit(url)
    if table in BIT_TABLES:
        tag: dict[str, Any] = {"name": "probe", "table": table, "address": address}
    else:
        tag = {"name": "probe", "table": table, "address": address, "type": "string",
               "length_registers": count}
    common: dict[str, Any] = {"name": "probe", "unit": unit, "timeout_s": timeout_s, "tags": [tag]}
    if table in BIT_TABLES and count > 1:
        common["tags"] = [{"name": f"bit{i}", "table": table, "address": address + i}
                          for i in range(count)]
    if parts.scheme in ("tcp", "rtu-tcp"):
        if not parts.hostname:
            raise ValueError(f"{url}: give a host, e.g. tcp://192.168.1.20:502")
        if parts.scheme == "rtu-tcp" and parts.port is None:
            raise ValueError(f"{url}: give the converter's port, e.g. rtu-tcp://192.168.1.30:4001 "
                             "(serial converters have no standard port)")
        protocol = "modbus-tcp" if parts.scheme == "tcp" else "modbus-rtu-tcp"
        cls: type[ModbusDevice] = ModbusTcpDevice if parts.scheme == "tcp" else ModbusRtuTcpDevice
        return cls.model_validate({**common, "protocol": protocol, "host": parts.hostname,
                                   "port": parts.port or 502})
    if parts.scheme == "rtu":
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        settings: dict[str, Any] = {"serial_port": parts.path}
        for key, cast in (("baudrate", int), ("parity", str), ("stop_bits", int), ("byte_size", int)):
            if key in query:
                settings[key] = cast(query.pop(key))
        if query:
            raise ValueError(f"{url}: unknown setting(s) {', '.join(query)} "
                             "(baudrate, parity, stop_bits, byte_size)")
        return ModbusRtuDevice.model_validate({**common, "protocol": "modbus-rtu", **settings})
    raise ValueError(f"{url}: the scheme must be tcp://, rtu-tcp:// or rtu:// (a serial port)")


def decodings(words: Sequence[int]) -> list[tuple[str, int, dict[ByteOrder, str]]]:
    """Every common type at every aligned offset of `words`, in the four orders."""
    rows: list[tuple[str, int, dict[ByteOrder, str]]] = []
    types: list[tuple[TagType, int]] = [("int16", 1), ("uint16", 1), ("int32", 2), ("uint32", 2),
                                        ("float32", 2), ("int64", 4), ("uint64", 4), ("float64", 4)]
    for type_, width in types:
        for offset in range(0, len(words) - width + 1, width):
            chunk = words[offset : offset + width]
            cells: dict[ByteOrder, str] = {}
            for order in ORDERS:
                value = decode(chunk, type_, order)
                if isinstance(value, float) and math.isfinite(value):
                    cells[order] = f"{value:.7g}" if type_ == "float32" else f"{value:.15g}"
                else:
                    cells[order] = str(value)
            rows.append((type_, offset, cells))
    rows.append(("string", 0, {order: _short(repr(decode_string(words, order))) for order in ORDERS}))
    return rows


def _short(text: str, width: int = 24) -> str:
    """Keep the table narrow: long text is cut (the raw words above show all of it)."""
    return text if len(text) <= width else text[: width - 3] + "..."


def print_probe(table: str, address: int, words: Sequence[int], out: TextIO) -> None:
    if table in BIT_TABLES:
        print(f"{table} {address}..{address + len(words) - 1}: "
              + " ".join(str(w) for w in words), file=out)
        return
    print(f"{table} registers from {address} (zero-based), {len(words)} word(s):", file=out)
    print("  address  hex     unsigned  signed", file=out)
    for i, word in enumerate(words):
        print(f"  {address + i:7d}  0x{word:04x}  {word:8d}  {word - 65536 if word > 32767 else word:6d}",
              file=out)
    rows = [("type", "@", *ORDERS)]
    for type_, offset, cells in decodings(words):
        rows.append((type_, f"+{offset}", *(cells[o] for o in ORDERS)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("decoded (A = most significant byte; ABCD big-endian, CDAB low word first, "
          "BADC bytes swapped, DCBA little-endian):", file=out)
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
              file=out)


async def probe(device: ModbusDevice) -> list[int]:
    """The raw words (or bits) at the probe device's single tag; DeviceError when refused."""
    readings, error = await read_device(device)
    if error is not None:
        raise error
    words: list[int] = []
    for reading in readings:
        if reading.error is not None:
            raise reading.error
        words.extend(reading.words)
    return words


def run_probe(url: str, unit: int, register: str | None, table: str | None, address: int | None,
              count: int, timeout_s: float, out: TextIO, err: TextIO) -> int:
    """`edge-agent probe modbus URL ...`; exit code 0, 1 (device failed) or 2 (usage)."""
    try:
        if register is not None:
            table, address = parse_register(register)
        elif table is None or address is None:
            raise ValueError("give --register (datasheet notation, e.g. 40001) or --table and --address")
        device = probe_device(url, unit, timeout_s, table, address, count)
    except (ValueError, ValidationError) as exc:
        print(f"probe: {exc}", file=err)
        return 2
    try:
        words = asyncio.run(probe(device))
    except DeviceError as exc:
        # The range asked for, not the single request a refused read was split into.
        where = f" at {table} {address}+{count}" if exc.address else ""
        detail = _format_error(exc).removeprefix("error: ")
        print(f"probe: {exc.reason}{where}: {detail}", file=err)
        return 1
    print_probe(table, address, words, out)
    return 0
