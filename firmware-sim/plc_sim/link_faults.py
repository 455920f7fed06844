"""Communication faults a test can switch on: what a bad line or a sick device does to a client.

These are faults of the *link*, not of the machine (those are scenarios). One
`Fault` is active per endpoint at a time, held by its `FaultPlan`; setting a new
one replaces it, `Fault("none")` clears it. A fault applies to every request
unless narrowed by `unit`, `table` and an address range (`first`..`last`,
zero-based), and for ever unless `times` limits it to the next N requests.

Where each kind acts (`ModbusSimServer` wires them in):

| kind | effect |
|---|---|
| `delay` | the answer leaves after `seconds` (a slow device) |
| `no_answer` | the request is swallowed (a dead slave, a broken RS-485 pair) |
| `exception` | exception response `code` (1..11) instead of the data |
| `words` | the registers from `first` on are served as the raw `words` given, in a valid answer: what a sensor fault looks like to the client (a Siemens analog input serves 32767, 7FFFh, on a broken wire or an overflow) |
| `drop` | TCP: every open connection is reset (RST) when a request arrives; serial: no answer |
| `refuse` | TCP: the listener closes, connections are refused until the fault is cleared |
| `bad_crc` | RTU framing: the answer's CRC is wrong |
| `garbage` | the answer is replaced by as many random bytes |
| `wrong_length` | TCP: the MBAP length field disagrees with the PDU; RTU: the frame is cut short |
| `wrong_tid` | TCP: the answer carries another transaction id |
| `wrong_unit` | the answer comes from another unit id (RTU: with a valid CRC) |

`delay`, `exception` and `words` act on register accesses, so they apply to mapped
addresses only (unmapped ones already answer exception 2); the others act on
whole frames and ignore the address range.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Literal, get_args

from pymodbus.constants import ExcCodes

from plc_sim.registers import Table

FaultKind = Literal[
    "none",
    "delay",
    "no_answer",
    "exception",
    "words",
    "drop",
    "refuse",
    "bad_crc",
    "garbage",
    "wrong_length",
    "wrong_tid",
    "wrong_unit",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
REGISTER_FAULTS = frozenset({"delay", "exception", "words"})
"""Kinds applied where a register access is answered (they know the address)."""
FRAME_FAULTS = frozenset(
    {"no_answer", "drop", "bad_crc", "garbage", "wrong_length", "wrong_tid", "wrong_unit"}
)
"""Kinds applied to the answer's bytes."""
Framing = Literal["socket", "rtu"]


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind = "none"
    seconds: float = 0.0
    """`delay` only."""
    code: int = ExcCodes.DEVICE_FAILURE
    """`exception` only: a Modbus exception code pymodbus can send (1..8, 10, 11)."""
    words: tuple[int, ...] = ()
    """`words` only: the raw register values served from `first` on (0..65535 each)."""
    unit: int | None = None
    table: Table | None = None
    first: int = 0
    last: int = 0xFFFF
    times: int | None = None
    """Apply to this many matching requests, then clear; None: until replaced."""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; one of: {', '.join(FAULT_KINDS)}")
        if self.seconds < 0:
            raise ValueError("seconds must be >= 0")
        if self.code not in ExcCodes.__members__.values():
            known = ", ".join(str(int(c)) for c in ExcCodes)
            raise ValueError(f"exception code {self.code} cannot be sent; one of: {known}")
        if self.table not in (None, "holding", "input"):
            raise ValueError("table must be 'holding' or 'input'")
        if not 0 <= self.first <= self.last <= 0xFFFF:
            raise ValueError("need 0 <= first <= last <= 65535")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1 (or absent: until cleared)")
        object.__setattr__(self, "words", tuple(self.words))  # a JSON list
        if self.kind == "words" and not self.words:
            raise ValueError("a words fault needs the register values: words: [32767]")
        if not all(isinstance(w, int) and 0 <= w <= 0xFFFF for w in self.words):
            raise ValueError("words must be register values, 0..65535 each")

    @classmethod
    def from_json(cls, message: Mapping[str, object]) -> Fault:
        """The fault a control message asks for: `{"fault": "delay", "seconds": 2}`.

        Raises ValueError naming the problem (unknown key, wrong type, bad value).
        """
        known = {f.name for f in fields(cls)}
        options = {key: value for key, value in message.items() if key not in ("fault", "endpoint")}
        unknown = sorted(set(options) - (known - {"kind"}))
        if unknown:
            raise ValueError(f"unknown fault option(s): {', '.join(unknown)}")
        kind = message.get("fault", "none")
        try:
            return cls(kind=kind, **options)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def as_json(self) -> dict[str, object]:
        return {"fault" if key == "kind" else key: value for key, value in asdict(self).items()}

    def matches(self, unit: int, table: Table | None, address: int | None, count: int) -> bool:
        if self.unit is not None and unit != self.unit:
            return False
        if table is None or address is None:
            return True
        if self.table is not None and table != self.table:
            return False
        return address <= self.last and address + count - 1 >= self.first


NO_FAULT = Fault()


class FaultPlan:
    """The fault currently active on one endpoint; shared by its hooks."""

    def __init__(self) -> None:
        self._fault = NO_FAULT
        self._left: int | None = None

    @property
    def current(self) -> Fault:
        return self._fault

    def set(self, fault: Fault) -> None:
        self._fault = fault
        self._left = fault.times

    def clear(self) -> None:
        self.set(NO_FAULT)

    def take(
        self,
        kinds: frozenset[str],
        unit: int,
        table: Table | None = None,
        address: int | None = None,
        count: int = 1,
    ) -> Fault | None:
        """The active fault if it is one of `kinds` and applies here; counts one use of `times`."""
        fault = self._fault
        if fault.kind not in kinds or not fault.matches(unit, table, address, count):
            return None
        if self._left is not None:
            self._left -= 1
            if self._left <= 0:
                self.clear()
        return fault


def crc16_modbus(frame: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), as sent low byte first."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<H", crc16_modbus(body))


def frame_unit(framing: Framing, frame: bytes) -> int | None:
    """The unit id an answer frame is from (None if too short to say)."""
    offset = 6 if framing == "socket" else 0
    return frame[offset] if len(frame) > offset else None


def mangle(kind: str, framing: Framing, frame: bytes, rng: random.Random) -> bytes:
    """The answer `frame` as the fault `kind` distorts it (b"" sends nothing)."""
    if kind in ("no_answer", "drop"):
        return b""
    if kind == "garbage":
        return bytes(rng.randrange(256) for _ in frame)
    if framing == "socket":
        return _mangle_mbap(kind, frame)
    return _mangle_rtu(kind, frame)


def _mangle_mbap(kind: str, frame: bytes) -> bytes:
    tid, protocol, length = struct.unpack(">HHH", frame[:6])
    rest = frame[6:]
    if kind == "wrong_tid":
        tid = (tid + 0x1111) & 0xFFFF
    elif kind == "wrong_length":
        length += 2
    elif kind == "wrong_unit":
        rest = bytes([(rest[0] + 1) & 0xFF]) + rest[1:]
    elif kind == "bad_crc":
        # MBAP has no checksum: the nearest thing is a payload that no longer
        # matches its header, i.e. a byte count off by one.
        rest = rest[:2] + bytes([(rest[2] + 1) & 0xFF]) + rest[3:] if len(rest) > 2 else rest
    return struct.pack(">HHH", tid, protocol, length) + rest


def _mangle_rtu(kind: str, frame: bytes) -> bytes:
    body = frame[:-2]
    if kind == "bad_crc":
        return frame[:-1] + bytes([frame[-1] ^ 0xFF])
    if kind == "wrong_length":
        return frame[: max(len(frame) - 3, 1)]
    if kind == "wrong_unit":
        return with_crc(bytes([(body[0] + 1) & 0xFF]) + body[1:])
    # wrong_tid: RTU has no transaction id; the answer is left alone.
    return frame
