"""Request planning: within the protocol limit, never over a gap too wide, and minimal."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.config import ModbusTag
from drivers.modbus.plan import plan_requests


def tag(name: str, address: int, type_: str = "uint16", table: str = "holding") -> ModbusTag:
    return ModbusTag(name=name, address=address, type=type_, table=table)  # type: ignore[arg-type]


def test_neighbours_merge_and_tables_stay_apart() -> None:
    plan = plan_requests(
        [tag("a", 0, "float32"), tag("b", 2), tag("c", 0, table="input")], max_gap_registers=0
    )
    assert [(r.table, r.address, r.count) for r in plan] == [("holding", 0, 3), ("input", 0, 1)]


def test_gap_wider_than_allowed_splits() -> None:
    plan = plan_requests([tag("a", 0), tag("b", 12)], max_gap_registers=10)
    assert [(r.address, r.count) for r in plan] == [(0, 1), (12, 1)]
    plan = plan_requests([tag("a", 0), tag("b", 11)], max_gap_registers=10)
    assert [(r.address, r.count) for r in plan] == [(0, 12)]


def test_protocol_limit_of_125_registers() -> None:
    plan = plan_requests([tag("a", 0), tag("b", 124), tag("c", 125)], max_gap_registers=200)
    assert [(r.address, r.count) for r in plan] == [(0, 125), (125, 1)]


def _brute_force_minimum(spans: list[tuple[int, int]], max_gap: int, limit: int) -> int:
    """Fewest contiguous groups of the sorted spans that satisfy the constraints (exhaustive)."""
    spans = sorted(spans)
    n = len(spans)

    def ok(group: list[tuple[int, int]]) -> bool:
        end = group[0][1]
        for start, stop in group[1:]:
            if start - end > max_gap:
                return False
            end = max(end, stop)
        return end - group[0][0] <= limit

    best = [0] + [n + 1] * n  # best[i]: fewest groups covering the first i spans
    for i in range(1, n + 1):
        for j in range(i):
            if ok(spans[j:i]):
                best[i] = min(best[i], best[j] + 1)
    return best[n]


@given(
    addresses=st.lists(st.integers(0, 400), min_size=1, max_size=12, unique=True),
    types=st.lists(st.sampled_from(["uint16", "float32", "uint64"]), min_size=12, max_size=12),
    max_gap=st.integers(0, 30),
)
def test_plan_is_minimal_and_valid(addresses: list[int], types: list[str], max_gap: int) -> None:
    tags = [tag(f"t{i}", a, types[i]) for i, a in enumerate(addresses)]
    plan = plan_requests(tags, max_gap_registers=max_gap)
    covered = [t.name for r in plan for t in r.tags]
    assert sorted(covered) == sorted(t.name for t in tags)
    for request in plan:
        assert request.count <= 125
        for t in request.tags:
            assert request.address <= t.address
            assert t.address + t.register_count <= request.address + request.count
    spans = [(t.address, t.address + t.register_count) for t in tags]
    assert len(plan) == _brute_force_minimum(spans, max_gap, 125)
