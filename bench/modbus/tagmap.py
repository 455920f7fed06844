"""The synthetic device of the Modbus benchmark: N tags, both the server's map and the agent's config.

Tags come in blocks of `TAGS_PER_BLOCK` packed back to back, blocks alternating between
the holding and the input table, each block followed by a hole wider than the device's
`max_gap_registers`: the planner cannot read over it, so 1,000 tags take 25 requests of
70 registers, the shape of a PLC's data blocks rather than one long array. Types cycle
float32, uint16, int32, float32 (1.75 registers per tag on average).

Server and client are built from the same list, and every tag has a known value, so the
benchmark checks that the agent decodes what was served before it times anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TAGS_PER_BLOCK = 40
GAP_REGISTERS = 20
"""Unmapped registers after each block: more than the default `max_gap_registers` (10)."""
TYPES: tuple[Literal["float32", "uint16", "int32"], ...] = ("float32", "uint16", "int32", "float32")
WORDS = {"float32": 2, "uint16": 1, "int32": 2}


@dataclass(frozen=True, slots=True)
class SyntheticTag:
    name: str
    table: Literal["holding", "input"]
    address: int
    type: Literal["float32", "uint16", "int32"]
    value: float | int
    """The number served (a float32 value is rounded to float32 by the wire)."""


def synthetic_tags(count: int) -> list[SyntheticTag]:
    """`count` tags with distinct, easily checked values, negative int32s included."""
    tags: list[SyntheticTag] = []
    next_address = {"holding": 0, "input": 0}
    for i in range(count):
        block, position = divmod(i, TAGS_PER_BLOCK)
        table: Literal["holding", "input"] = "holding" if block % 2 == 0 else "input"
        if position == 0 and block >= 2:
            next_address[table] += GAP_REGISTERS
        type_ = TYPES[i % len(TYPES)]
        value: float | int
        if type_ == "float32":
            value = i * 1.25 - 300.5
        elif type_ == "uint16":
            value = (i * 7919) % 65536
        else:
            value = (i - count // 2) * 100_003
        tags.append(SyntheticTag(f"t{i:04d}", table, next_address[table], type_, value))
        next_address[table] += WORDS[type_]
    return tags
