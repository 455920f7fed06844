"""Configuration of a Modbus device and its tags, as a technician writes it in the YAML file.

A tag's address is written either as on the wire (`table: holding, address: 100`,
zero-based) or as datasheets print it (`register: 40101`); both end up as a
table and a zero-based address, and the tag remembers which form it was given in
so that `edge-agent check` can say how it was read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from drivers.modbus.profiles import find_profile, read_profile
from drivers.naming import check_tag_name, require_unique_names
from drivers.settings import Settings
from drivers.sharing import Share
from drivers.valid_range import ValidRange

ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
"""Order of the bytes of a multi-byte value as they arrive, A being the most significant.

ABCD: big-endian, high word first (the Modbus default). CDAB: low word first.
BADC: bytes swapped within each word. DCBA: little-endian.
"""

TagType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
Table = Literal["coil", "discrete", "holding", "input"]
BIT_TABLES: tuple[Table, ...] = ("coil", "discrete")

REGISTERS_PER_TYPE: dict[str, int] = {
    "bool": 1,  # a bit of one register (in a register table)
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}

MAX_REGISTERS_PER_REQUEST = 125
"""Protocol limit of function codes 3 and 4 (a 256-byte ADU)."""
MAX_BITS_PER_REQUEST = 2000
"""Protocol limit of function codes 1 and 2."""


# Datasheet register notation: the leading digit names the table, the rest is one-based.
# Five digits (40001 = holding 0) up to x9999; six digits (400001) reach the whole 65536.
_NOTATION: tuple[tuple[int, int, Table, int], ...] = (
    (1, 9999, "coil", 1),
    (10001, 19999, "discrete", 10001),
    (30001, 39999, "input", 30001),
    (40001, 49999, "holding", 40001),
    (100001, 165536, "discrete", 100001),
    (300001, 365536, "input", 300001),
    (400001, 465536, "holding", 400001),
)


def parse_register(register: int | str) -> tuple[Table, int]:
    """Table and zero-based address of a datasheet register number (`40101` -> holding 100).

    A string of six digits is read in the six-digit form (`"000017"` is coil 16), which
    is the only way to write coils above 9999 in this notation.
    """
    text = str(register).strip()
    if not text.isdigit():
        raise ValueError(f"register {register!r} is not a number like 40001 or 300001")
    number = int(text)
    if len(text) == 6 and text[0] == "0":
        if 1 <= number <= 65536:
            return "coil", number - 1
    else:
        for low, high, table, base in _NOTATION:
            if low <= number <= high:
                return table, number - base
    raise ValueError(
        f"register {register} is not in the datasheet notation: 1-9999 coils, 10001-19999 "
        "discrete inputs, 30001-39999 input registers, 40001-49999 holding registers "
        "(or the six-digit 100001-165536, 300001-365536, 400001-465536); the first "
        "register of a table is x0001, not x0000; or give table and a zero-based address"
    )




class ModbusTag(Settings):
    """One value read from the device; `value = raw * scale + offset`, in `unit`."""

    name: str
    table: Table = "holding"
    """Filled from `register` when that is given."""
    address: int = Field(default=0, ge=0, le=65535)
    """Zero-based, as in the request PDU; filled from `register` when that is given."""
    datasheet_register: int | str | None = Field(default=None, alias="register")
    """`register:` in the file: the datasheet form (40101, 300001), when the tag was written so."""
    type: TagType = "bool"
    """Required for registers; coils and discrete inputs are bool."""
    bit: int | None = Field(default=None, ge=0, le=15)
    """For a bool in a register: bit 0 is the least significant."""
    length_registers: int | None = Field(default=None, ge=1, le=MAX_REGISTERS_PER_REQUEST)
    """For a string: how many registers it spans (two ASCII characters each)."""
    byte_order: ByteOrder | None = None
    """Overrides the device's byte order for this tag only."""
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    share: Share | None = None
    """What of this tag leaves the site; the device's `share` when absent."""
    counter: bool = False
    """A cumulative value (an energy meter's kWh register, an operating-hours counter): the
    agent reports its increase, across the register's rollover and a meter reset."""
    poll_group: str = "default"
    """Which of the device's `poll_groups` reads this tag; `default` is `poll_interval_s`."""
    report_on_change: bool = False
    """Send a `change` event whenever the value moves by more than `deadband`."""
    deadband: float = Field(default=0.0, ge=0)
    """In the tag's unit: smaller moves are not reported as changes."""
    valid_range: ValidRange | None = None
    """What the sensor can deliver, `[low, high]` in the tag's unit: a value outside is a
    sensor or wiring fault, a BAD sample for every detector (drivers/valid_range.py)."""

    @model_validator(mode="before")
    @classmethod
    def _resolve_register(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("register") is None:
            if isinstance(data, dict) and "address" not in data:
                raise ValueError(
                    "give the tag's address: register (datasheet notation, e.g. 40101) "
                    "or table and a zero-based address"
                )
            return data
        both = [key for key in ("table", "address") if key in data]
        if both:
            raise ValueError(
                f"give either register ({data['register']}, datasheet notation) or "
                f"table and address (zero-based), not both (got {' and '.join(both)} too)"
            )
        table, address = parse_register(data["register"])
        return {**data, "table": table, "address": address}

    @field_validator("name")
    @classmethod
    def _name_is_an_identifier(cls, name: str) -> str:
        return check_tag_name(name)

    @model_validator(mode="after")
    def _consistent(self) -> ModbusTag:
        fields = self.model_fields_set
        if self.table in BIT_TABLES:
            if self.type != "bool":
                raise ValueError(f"a {self.table} holds one bit: its type is bool, not {self.type}")
            for key in ("bit", "length_registers", "byte_order"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} does not apply to a {self.table} (a single bit)")
        elif "type" not in fields:
            raise ValueError(
                f"a {self.table} register needs a type: bool (with bit), int16, uint16, "
                "int32, uint32, int64, uint64, float32, float64 or string"
            )
        elif self.type == "bool" and self.bit is None:
            raise ValueError("a bool in a register needs bit: 0-15 (0 is the least significant)")
        if self.bit is not None and self.type != "bool":
            raise ValueError(f"bit applies to a bool, not to a {self.type}")
        if self.type == "string":
            if self.length_registers is None:
                raise ValueError("a string needs length_registers: how many registers it spans")
            if self.counter or self.report_on_change and self.deadband:
                raise ValueError("a string cannot be a counter or have a deadband")
        elif self.length_registers is not None:
            raise ValueError(f"length_registers applies to a string, not to a {self.type}")
        if self.counter and self.type == "bool":
            raise ValueError("a bool cannot be a counter")
        end = self.address + self.register_count - 1
        if end > 65535:
            raise ValueError(f"a {self.type} at address {self.address} ends past register 65535")
        return self

    @property
    def is_bit(self) -> bool:
        """Read with function codes 1 or 2 (a coil or a discrete input)."""
        return self.table in BIT_TABLES

    @property
    def register_count(self) -> int:
        """Registers (or bits, in a bit table) the tag spans."""
        if self.is_bit:
            return 1
        if self.type == "string":
            assert self.length_registers is not None
            return self.length_registers
        return REGISTERS_PER_TYPE[self.type]

    @property
    def change_deadband(self) -> float | None:
        """The move that makes a `change` event (None: the tag does not report changes)."""
        return self.deadband if self.report_on_change else None

    @property
    def counter_modulus(self) -> float | None:
        """Where a counter tag's value wraps to zero, in engineering units (`2**bits * scale`);
        None for a float register, which does not wrap (a drop there is a meter reset)."""
        if not self.counter or self.type.startswith("float"):
            return None
        return float(2 ** (16 * self.register_count)) * abs(self.scale)

    def describe_address(self) -> str:
        """How the address was read, for `check` and `plan`: `register 40101 = holding 100`."""
        where = f"{self.table} {self.address}"
        if self.bit is not None:
            where += f" bit {self.bit}"
        if self.datasheet_register is not None:
            return f"register {self.datasheet_register} = {where} (zero-based)"
        return f"{where} (zero-based)"


class _ModbusDevice(Settings):
    """What every Modbus device has, whatever carries its frames."""

    name: str
    unit: int = Field(default=1, ge=0, le=255)
    """Unit (slave) id; 1 for most devices, the slave address on a bus or behind a gateway."""
    profile: str | None = None
    """A register map from `config/profiles/` (e.g. `eastron-sdm630`): its tags come first,
    the device's own `tags` are added (a tag of the same name replaces the profile's)."""
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    poll_interval_s: float = Field(default=1.0, gt=0, le=86400)
    """Interval of the `default` poll group."""
    poll_groups: dict[str, float] = Field(default_factory=dict)
    """More poll groups, name -> interval in seconds; a tag joins one with `poll_group`."""
    byte_order: ByteOrder = "ABCD"
    max_gap_registers: int = Field(default=10, ge=0, le=MAX_REGISTERS_PER_REQUEST)
    """Unused registers one request may read over to save a request."""
    max_gap_bits: int = Field(default=64, ge=0, le=MAX_BITS_PER_REQUEST)
    """Unused coils or discrete inputs one request may read over."""
    share: Share = "aggregates"
    """What of this device's data leaves the site (each tag may override it)."""
    tags: list[ModbusTag] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _profile(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or not data.get("profile"):
            return data
        context = info.context if isinstance(info.context, dict) else {}
        return _with_profile(data, context.get("config_dir"))

    @field_validator("tags")
    @classmethod
    def _tag_names_unique(cls, tags: list[ModbusTag]) -> list[ModbusTag]:
        require_unique_names(tags, "tag")
        return tags

    @field_validator("poll_groups")
    @classmethod
    def _intervals(cls, groups: dict[str, float]) -> dict[str, float]:
        for group, interval_s in groups.items():
            if not 0 < interval_s <= 86400:
                raise ValueError(f"poll group {group!r}: interval {interval_s} s is not in (0, 86400]")
        if "default" in groups:
            raise ValueError("the default poll group's interval is poll_interval_s")
        return groups

    @model_validator(mode="after")
    def _tags_and_groups(self) -> _ModbusDevice:
        if not self.tags:
            raise ValueError("a device needs tags (or a profile that brings them)")
        for tag in self.tags:
            if tag.poll_group != "default" and tag.poll_group not in self.poll_groups:
                known = ", ".join(["default", *self.poll_groups])
                raise ValueError(f"tag {tag.name!r}: poll group {tag.poll_group!r} is not one of {known}")
        return self

    def interval_of(self, group: str) -> float:
        return self.poll_interval_s if group == "default" else self.poll_groups[group]


def _with_profile(device: dict[str, Any], config_dir: Path | None) -> dict[str, Any]:
    """The device's data with its profile's tags first; a device tag of the same name wins.

    The profile's tags are checked here, so that an error in a profile names the
    profile's file rather than a tag the technician never wrote.
    """
    path = find_profile(str(device["profile"]), config_dir)
    profile = read_profile(path)
    own = device.get("tags") or []
    own_names = {tag.get("name") for tag in own if isinstance(tag, dict)}
    tags: list[Any] = []
    for i, tag in enumerate(profile["tags"]):
        try:
            ModbusTag.model_validate(tag)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(
                f"profile {path}: tags[{i}]{'.' + where if where else ''}: {first['msg']}"
            ) from None
        if tag.get("name") not in own_names:
            tags.append(tag)
    merged = {**device, "tags": [*tags, *own]}
    if "byte_order" not in device and "byte_order" in profile:
        merged["byte_order"] = profile["byte_order"]
    return merged


class ModbusTcpDevice(_ModbusDevice):
    """A Modbus TCP device (a PLC, a meter, or a gateway in front of serial slaves)."""

    protocol: Literal["modbus-tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)


class ModbusRtuTcpDevice(_ModbusDevice):
    """RTU frames (with CRC) over a TCP socket: a serial-to-Ethernet converter in transparent mode."""

    protocol: Literal["modbus-rtu-tcp"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    inter_frame_delay_s: float = Field(default=0.0, ge=0, le=10)
    """Pause between the end of one transaction and the next request on this line."""


class ModbusRtuDevice(_ModbusDevice):
    """A slave on an RS-485/RS-232 line. Devices naming the same `serial_port` share the bus:
    one transaction at a time, and their line settings must agree."""

    protocol: Literal["modbus-rtu"]
    serial_port: str
    """e.g. /dev/ttyUSB0, or /dev/serial/by-id/... which survives re-plugging."""
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stop_bits: Literal[1, 2] = 1
    byte_size: Literal[7, 8] = 8
    inter_frame_delay_s: float = Field(default=0.0, ge=0, le=10)
    """Pause between the end of one transaction and the next request on this bus (some slow
    slaves need more than the 3.5 character times of the standard)."""


ModbusDevice = ModbusTcpDevice | ModbusRtuTcpDevice | ModbusRtuDevice


def line_key(config: ModbusDevice) -> tuple[str, ...]:
    """Devices with the same key share a line: one connection, one transaction at a time."""
    if isinstance(config, ModbusRtuDevice):
        return ("rtu", config.serial_port)
    if isinstance(config, ModbusRtuTcpDevice):
        return ("rtu-tcp", config.host, str(config.port))
    return ("tcp", config.host, str(config.port))
