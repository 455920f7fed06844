"""Request planning: within the protocol limit, never over a gap too wide, and minimal."""

from __future__ import annotations

from hypothesis import given, settings
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
    # Two requests either way; the planner reads the fewer registers.
    assert [(r.address, r.count) for r in plan] == [(0, 1), (124, 2)]
    plan = plan_requests([tag(f"t{i}", i) for i in range(126)], max_gap_registers=0)
    assert [(r.address, r.count) for r in plan] == [(0, 125), (125, 1)]


def test_bits_merge_up_to_2000_and_registers_up_to_125() -> None:
    coils = [tag(f"c{i}", i * 100, "bool", "coil") for i in range(21)]  # 0..2000
    plan = plan_requests(coils, max_gap_registers=0, max_gap_bits=99)
    assert [(r.table, r.address, r.count) for r in plan] == [("coil", 0, 1901), ("coil", 2000, 1)]


def test_bits_of_one_register_share_a_read() -> None:
    bits = [ModbusTag(name=f"b{i}", address=7, type="bool", bit=i) for i in (0, 3, 15)]
    plan = plan_requests(bits, max_gap_registers=0)
    assert [(r.address, r.count, len(r.tags)) for r in plan] == [(7, 1, 3)]


def _brute_force_minimum(spans: list[tuple[int, int]], max_gap: int, limit: int) -> int:
    """The fewest read ranges such that every span lies inside one, found exhaustively.

    Any range [s, e) with s a span's start and e a span's end is a candidate, overlaps
    allowed; it is valid when it is at most `limit` long and no run of units in it that no
    span inside it uses is longer than `max_gap`. Breadth-first search over the sets of
    spans covered: the first level that covers all is the optimum.
    """
    n = len(spans)
    candidates: set[int] = set()
    for s in {a for a, _ in spans}:
        for e in {b for _, b in spans}:
            if not 0 < e - s <= limit:
                continue
            inside = [i for i, (a, b) in enumerate(spans) if s <= a and b <= e]
            if not inside:
                continue
            used = [False] * (e - s)
            for i in inside:
                for unit in range(spans[i][0], spans[i][1]):
                    used[unit - s] = True
            hole = longest = 0
            for u in used:
                hole = 0 if u else hole + 1
                longest = max(longest, hole)
            if longest <= max_gap:
                candidates.add(sum(1 << i for i in inside))
    everything = (1 << n) - 1
    level, seen, count = {0}, {0}, 0
    while everything not in level:
        count += 1
        level = {m | c for m in level for c in candidates} - seen
        seen |= level
    return count


_TYPES = ["uint16", "float32", "uint64", "bool", "string"]


@given(
    addresses=st.lists(st.integers(0, 60), min_size=1, max_size=8),
    types=st.lists(st.sampled_from(_TYPES), min_size=8, max_size=8),
    lengths=st.lists(st.integers(1, 12), min_size=8, max_size=8),
    max_gap=st.integers(0, 12),
    limit=st.integers(12, 40),
    bit_table=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_plan_is_minimal_and_valid(
    addresses: list[int], types: list[str], lengths: list[int], max_gap: int, limit: int,
    bit_table: bool,
) -> None:
    """Against the exhaustive optimum, with tags that overlap (bits of one register, strings
    over shorter tags) and limits small enough to bind."""
    if bit_table:
        tags = [ModbusTag(name=f"t{i}", table="coil", address=a) for i, a in enumerate(addresses)]
    else:
        tags = [
            ModbusTag(name=f"t{i}", address=a, type=types[i],  # type: ignore[arg-type]
                      bit=0 if types[i] == "bool" else None,
                      length_registers=lengths[i] if types[i] == "string" else None)
            for i, a in enumerate(addresses)
        ]
    plan = plan_requests(tags, max_gap_registers=max_gap, max_gap_bits=max_gap,
                         max_registers=limit, max_bits=limit)
    covered = [t.name for r in plan for t in r.tags]
    assert sorted(covered) == sorted(t.name for t in tags)
    for request in plan:
        assert request.count <= limit
        for t in request.tags:
            assert request.address <= t.address
            assert t.address + t.register_count <= request.address + request.count
    spans = [(t.address, t.address + t.register_count) for t in tags]
    assert len(plan) == _brute_force_minimum(spans, max_gap, limit)
