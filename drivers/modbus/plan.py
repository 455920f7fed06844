"""Request planning: the fewest read requests that cover a poll group's tags.

Per table, tags sorted by address are split into runs, each read by one request: a
run fits when its span stays within the protocol limit (125 registers, 2000 bits) and
no hole it reads over is longer than the device's maximum gap. The split is chosen by
dynamic programming over the sorted tags (the fewest requests, ties broken towards
fewer registers read), not greedily: with tags that overlap (bits of one register, a
long string over shorter tags) the greedy longest-first run is not always minimal.
`tests/unit/test_modbus_plan.py` checks the result against a brute-force optimum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.modbus.config import (
    BIT_TABLES,
    MAX_BITS_PER_REQUEST,
    MAX_REGISTERS_PER_REQUEST,
    ModbusTag,
    Table,
    _ModbusDevice,
)

TABLE_ORDER: tuple[Table, ...] = ("holding", "input", "coil", "discrete")
FUNCTION_CODE: dict[Table, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
"""The only function codes the agent sends: reads. It never writes to a device."""


@dataclass(frozen=True, slots=True)
class Request:
    """One read request and the tags it carries."""

    table: Table
    address: int
    count: int
    tags: tuple[ModbusTag, ...]

    @classmethod
    def for_tag(cls, tag: ModbusTag) -> Request:
        """A request for this tag alone (reading refused requests tag by tag)."""
        return cls(tag.table, tag.address, tag.register_count, (tag,))

    @property
    def function_code(self) -> int:
        return FUNCTION_CODE[self.table]

    def describe(self) -> str:
        """`holding 100+4` (registers) or `coil 0+16` (bits): what goes on the wire."""
        return f"{self.table} {self.address}+{self.count}"


@dataclass(frozen=True, slots=True)
class ModbusReadPlan:
    """A poll group: requests read together every `interval_s` (satisfies drivers.base.ReadPlan)."""

    name: str
    interval_s: float
    requests: tuple[Request, ...]

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(tag.name for request in self.requests for tag in request.tags)


def plan_device(device: _ModbusDevice) -> tuple[ModbusReadPlan, ...]:
    """One plan per poll group that has tags, `default` first."""
    groups = ["default", *device.poll_groups]
    plans = []
    for group in groups:
        tags = [tag for tag in device.tags if tag.poll_group == group]
        if tags:
            requests = plan_requests(
                tags, max_gap_registers=device.max_gap_registers, max_gap_bits=device.max_gap_bits
            )
            plans.append(ModbusReadPlan(group, device.interval_of(group), requests))
    return tuple(plans)


def plan_requests(
    tags: Sequence[ModbusTag],
    *,
    max_gap_registers: int,
    max_gap_bits: int = 64,
    max_registers: int = MAX_REGISTERS_PER_REQUEST,
    max_bits: int = MAX_BITS_PER_REQUEST,
) -> tuple[Request, ...]:
    """The fewest requests covering `tags`, per table in TABLE_ORDER, in address order."""
    requests: list[Request] = []
    for table in TABLE_ORDER:
        in_table = sorted(
            (t for t in tags if t.table == table), key=lambda t: (t.address, t.register_count)
        )
        if not in_table:
            continue
        bits = table in BIT_TABLES
        gap, limit = (max_gap_bits, max_bits) if bits else (max_gap_registers, max_registers)
        spans = [(t.address, t.address + t.register_count) for t in in_table]
        for first, last in _fewest_runs(spans, gap, limit):
            run = in_table[first:last]
            start = spans[first][0]
            end = max(e for _, e in spans[first:last])
            requests.append(Request(table, start, end - start, tuple(run)))
    return tuple(requests)


def _fewest_runs(spans: list[tuple[int, int]], max_gap: int, limit: int) -> list[tuple[int, int]]:
    """Split sorted spans into consecutive runs [first, last): fewest runs, then fewest units read.

    best[i] is the cost of covering spans[i:]; a run spans[i:j] is feasible while its
    width fits `limit` and each hole between covered units is at most `max_gap`.
    """
    n = len(spans)
    inf = (n + 1, 0)
    best: list[tuple[int, int]] = [inf] * n + [(0, 0)]
    cut = [n] * n
    for i in range(n - 1, -1, -1):
        start, end = spans[i]
        for j in range(i + 1, n + 1):
            if j > i + 1:
                s, e = spans[j - 1]
                if s - end > max_gap or max(end, e) - start > limit:
                    break
                end = max(end, e)
            rest = best[j]
            cost = (rest[0] + 1, rest[1] + end - start)
            if cost <= best[i]:  # on a tie, the longer first run: reads in address order
                best[i], cut[i] = cost, j
    runs = []
    i = 0
    while i < n:
        runs.append((i, cut[i]))
        i = cut[i]
    return runs
