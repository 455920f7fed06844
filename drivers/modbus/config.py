"""Configuration of a Modbus device, as a technician writes it in the YAML file.

Addresses are zero-based, as they travel in the request PDU (`address: 0` is
the first register, what datasheets often call 30001 or 40001).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.naming import require_unique_names
from drivers.sharing import Share

ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
"""Order of the bytes of a multi-byte value as they arrive, A being the most significant.

ABCD: big-endian, high word first (the Modbus default). CDAB: low word first.
BADC: bytes swapped within each word. DCBA: little-endian.
"""

TagType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
Table = Literal["holding", "input"]

REGISTERS_PER_TYPE: dict[str, int] = {
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

_TAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModbusTag(_Strict):
    """One value read from the device; `value = raw * scale + offset`, in `unit`."""

    name: str
    table: Table = "holding"
    address: int = Field(ge=0, le=65535)
    type: TagType
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

    @field_validator("name")
    @classmethod
    def _name_is_an_identifier(cls, name: str) -> str:
        if not _TAG_NAME.match(name):
            raise ValueError(
                f"tag name {name!r} must start with a letter and hold only letters, "
                "digits, '_', '.' or '-'"
            )
        return name

    @model_validator(mode="after")
    def _fits_address_space(self) -> ModbusTag:
        end = self.address + REGISTERS_PER_TYPE[self.type] - 1
        if end > 65535:
            raise ValueError(f"a {self.type} at address {self.address} ends past register 65535")
        return self

    @property
    def register_count(self) -> int:
        return REGISTERS_PER_TYPE[self.type]

    @property
    def counter_modulus(self) -> float | None:
        """Where a counter tag's value wraps to zero, in engineering units (`2**bits * scale`);
        None for a float register, which does not wrap (a drop there is a meter reset)."""
        if not self.counter or self.type.startswith("float"):
            return None
        return float(2 ** (16 * self.register_count)) * abs(self.scale)


class ModbusTcpDevice(_Strict):
    """A Modbus TCP device (a PLC, a meter, or a gateway in front of serial slaves)."""

    name: str
    protocol: Literal["modbus-tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    """Unit (slave) id; 1 for most devices, the slave address behind a TCP gateway."""
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    poll_interval_s: float = Field(default=1.0, gt=0, le=86400)
    byte_order: ByteOrder = "ABCD"
    max_gap_registers: int = Field(default=10, ge=0, le=MAX_REGISTERS_PER_REQUEST)
    """Unused registers one request may read over to save a request."""
    share: Share = "aggregates"
    """What of this device's data leaves the site (each tag may override it)."""
    tags: list[ModbusTag] = Field(min_length=1)

    @field_validator("tags")
    @classmethod
    def _tag_names_unique(cls, tags: list[ModbusTag]) -> list[ModbusTag]:
        require_unique_names(tags, "tag")
        return tags
