"""Request planning: the fewest read requests that cover a device's tags.

Tags of one table are sorted by address and merged greedily: a request grows
while it stays within the protocol limit and the hole it reads over is at most
`max_gap_registers`. For intervals on a line under a length cap this greedy
cover is minimal (each request starts at the first tag not yet covered and
reaches as far as allowed, so no cover can use fewer).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.modbus.config import MAX_REGISTERS_PER_REQUEST, ModbusTag, Table


@dataclass(frozen=True, slots=True)
class Request:
    """One read request and the tags it carries."""

    table: Table
    address: int
    count: int
    tags: tuple[ModbusTag, ...]


@dataclass(frozen=True, slots=True)
class ModbusReadPlan:
    """A poll group: requests read together every `interval_s` (satisfies drivers.base.ReadPlan)."""

    name: str
    interval_s: float
    requests: tuple[Request, ...]

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(tag.name for request in self.requests for tag in request.tags)


def plan_requests(
    tags: list[ModbusTag],
    *,
    max_gap_registers: int,
    max_registers: int = MAX_REGISTERS_PER_REQUEST,
) -> tuple[Request, ...]:
    """Merge tags into requests, per table, in address order."""
    requests: list[Request] = []
    for table in ("holding", "input"):
        in_table = sorted((t for t in tags if t.table == table), key=lambda t: t.address)
        current: list[ModbusTag] = []
        start = end = 0  # end is exclusive
        for tag in in_table:
            tag_end = tag.address + tag.register_count
            fits = (
                current
                and tag.address - end <= max_gap_registers
                and max(end, tag_end) - start <= max_registers
            )
            if fits:
                current.append(tag)
                end = max(end, tag_end)
                continue
            if current:
                requests.append(Request(table, start, end - start, tuple(current)))
            current, start, end = [tag], tag.address, tag_end
        if current:
            requests.append(Request(table, start, end - start, tuple(current)))
    return tuple(requests)
