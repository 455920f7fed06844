"""The system benchmark's latency arithmetic: a stamp is milliseconds modulo 2**32 (it wraps
every 49.7 days), and only the first arrival of each value counts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_system_measure",
                                               ROOT / "bench" / "system" / "measure.py")
assert _spec is not None and _spec.loader is not None
measure = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = measure  # dataclasses look their module up while being built
_spec.loader.exec_module(measure)

MS = 1_000_000


def test_change_time_is_recovered_from_a_stamp_across_the_wrap() -> None:
    changed_ms = 5 * 2**32 - 300  # 300 ms before the stamp wraps to 0
    arrival_ns = (changed_ms + 700) * MS  # arrives after the wrap
    stamp = changed_ms % 2**32
    assert measure.change_time_ns(stamp, arrival_ns) == changed_ms * MS


def test_only_the_first_arrival_of_a_value_in_the_span_counts() -> None:
    base_ms = 1_795_000_000_000
    stamp = base_ms % 2**32
    seen = [
        measure.StampSeen("plc-001", stamp, (base_ms + 400) * MS, (base_ms + 900) * MS),
        # the same value sent again by a system that sends every poll: not a new change
        measure.StampSeen("plc-001", stamp, (base_ms + 1400) * MS, (base_ms + 1500) * MS),
        # arrived after the span
        measure.StampSeen("plc-002", stamp, (base_ms + 400) * MS, (base_ms + 5000) * MS),
    ]
    result = measure.latencies(seen, base_ms * MS, (base_ms + 3000) * MS)
    assert result.change_to_broker_ms == [900.0]
    assert result.timestamp_to_broker_ms == [500.0]
    assert measure.percentile([], 0.5) is None
