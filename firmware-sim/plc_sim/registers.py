"""Register maps: where each value lives, and how a number becomes register words.

A register map is a contract with the agent's device configuration, so it is
written down as data (`RegisterSpec`) rather than buried in encoding code. The
encoding here is deliberately independent of the agent's decoder: the
simulator must be a second opinion on byte and word order, not a mirror of it.

Conventions: addresses are zero-based as in the request PDU; within a
register, bytes are big-endian; `word_order` says whether the high ("ABCD")
or the low ("CDAB") 16-bit word of a 32-bit value is sent first.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Table = Literal["holding", "input"]
ValueType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32"]
WordOrder = Literal["ABCD", "CDAB"]

_WORDS: dict[ValueType, int] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
}
_INT_RANGE: dict[ValueType, tuple[int, int]] = {
    "int16": (-0x8000, 0x7FFF),
    "uint16": (0, 0xFFFF),
    "int32": (-0x8000_0000, 0x7FFF_FFFF),
    "uint32": (0, 0xFFFF_FFFF),
    "int64": (-0x8000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF),
    "uint64": (0, 0xFFFF_FFFF_FFFF_FFFF),
}
_STRUCT_CODE: dict[ValueType, str] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
}


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """One value of a register map, as a datasheet row describes it."""

    name: str
    table: Table
    address: int
    type: ValueType
    word_order: WordOrder = "ABCD"
    unit: str = ""
    scale: float = 1.0
    """Engineering value = raw * scale (so raw = round(value / scale) for integers)."""

    @property
    def count(self) -> int:
        """Number of 16-bit registers the value occupies."""
        return _WORDS[self.type]


def float32(value: float) -> float:
    """`value` rounded to the nearest float32, i.e. what a client decodes from two registers."""
    rounded: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return rounded


def saturate(raw: int, type_: ValueType) -> int:
    """Clamp an integer to the range of its register type, as a PLC's MOVE with limits does.

    Counters that should wrap (energy, operating seconds) are wrapped by the
    caller before encoding; anything else out of range is a saturated reading.
    """
    low, high = _INT_RANGE[type_]
    return min(max(raw, low), high)


def encode(spec: RegisterSpec, raw: float) -> list[int]:
    """The words for one raw value, in transmission order.

    `raw` is the number before scaling (an int for integer types; floats are
    sent as they are). Integers outside the type's range are saturated.
    """
    if spec.type == "float32":
        big = struct.pack(">f", float(raw))
    else:
        big = struct.pack(_STRUCT_CODE[spec.type], saturate(int(raw), spec.type))
    words = [int.from_bytes(big[i : i + 2], "big") for i in range(0, len(big), 2)]
    if spec.word_order == "CDAB":
        # Low word first; for 64-bit values every word is reversed (the
        # "little-endian words" convention of the meters that use it).
        words.reverse()
    return words


@dataclass(frozen=True, slots=True)
class WordRun:
    """A contiguous run of registers in one table: the unit a Modbus datastore serves."""

    table: Table
    address: int
    specs: tuple[RegisterSpec, ...]

    @property
    def count(self) -> int:
        return sum(spec.count for spec in self.specs)


def contiguous_runs(specs: Iterable[RegisterSpec]) -> list[WordRun]:
    """Group a map into gap-free runs per table, so everything between runs is unmapped.

    Raises ValueError if two values overlap.
    """
    runs: list[WordRun] = []
    ordered = sorted(specs, key=lambda s: (s.table, s.address))
    for spec in ordered:
        last = runs[-1] if runs else None
        if last is not None and last.table == spec.table:
            end = last.address + last.count
            if spec.address < end:
                raise ValueError(f"register {spec.name!r} overlaps {last.specs[-1].name!r}")
            if spec.address == end:
                runs[-1] = WordRun(last.table, last.address, (*last.specs, spec))
                continue
        runs.append(WordRun(spec.table, spec.address, (spec,)))
    return runs


def encode_run(run: WordRun, raw_values: Mapping[str, float]) -> list[int]:
    """All words of a run, from the raw value of each register spec in it."""
    words: list[int] = []
    for spec in run.specs:
        words.extend(encode(spec, raw_values[spec.name]))
    return words
