"""Window aggregates: exact statistics, bad samples kept apart, windows on the monotonic clock."""

from __future__ import annotations

import numpy as np
import pytest

from agent.detect.window import WindowAggregator
from agent.events import WINDOW
from drivers.samples import Quality, SampleBatch

S = 1_000_000_000


def batch(values: list[float], mono_s: float, quality: list[int] | None = None,
          tags: tuple[str, ...] = ("a", "b")) -> SampleBatch:
    return SampleBatch(
        device="m1",
        tags=tags,
        values=np.asarray(values, dtype=np.float64),
        quality=np.asarray(quality or [0] * len(values), dtype=np.uint8),
        time_ns=1_700_000_000 * S + int(mono_s * S),
        mono_ns=int(mono_s * S),
    )


def test_statistics_match_numpy() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(1e6, 3.0, 50)  # a large offset: naive sum of squares would lose the variance
    b = rng.normal(-5, 1.0, 50)
    agg = WindowAggregator("m1", ["a", "b"], {"a": "kWh"}, window_s=60)
    for i in range(50):
        assert agg.on_batch(batch([a[i], b[i]], i * 1.0)) == []
    [event] = agg.flush(1)
    assert event.kind == WINDOW and event.device == "m1"
    stats = event.data["tags"]
    for name, series in (("a", a), ("b", b)):
        s = stats[name]
        assert s["n"] == 50 and s["bad"] == 0
        assert s["min"] == series.min() and s["max"] == series.max() and s["last"] == series[-1]
        assert s["mean"] == pytest.approx(series.mean(), rel=1e-12)
        assert s["std"] == pytest.approx(series.std(), rel=1e-9)
    assert stats["a"]["unit"] == "kWh"


def test_bad_samples_are_counted_not_averaged() -> None:
    agg = WindowAggregator("m1", ["a", "b"], {}, window_s=60)
    agg.on_batch(batch([1.0, 1.0], 0))
    agg.on_batch(batch([1e30, float("nan")], 1, quality=[Quality.BAD, Quality.BAD]))
    [event] = agg.flush(0)
    assert event.data["tags"]["a"]["max"] == 1.0
    assert event.data["tags"]["a"]["bad"] == 1 and event.data["tags"]["b"]["n"] == 1


def test_window_closes_on_the_monotonic_clock_even_without_samples() -> None:
    agg = WindowAggregator("m1", ["a", "b"], {}, window_s=10)
    agg.on_batch(batch([1.0, 2.0], 100))
    assert agg.on_tick(int(109.9 * S), 0) == []
    [event] = agg.on_tick(110 * S, 42)
    assert event.time_ns == 42 and event.data["end_ns"] == 42
    assert agg.on_tick(200 * S, 0) == [], "an empty window sends nothing"


def test_next_window_starts_fresh() -> None:
    agg = WindowAggregator("m1", ["a", "b"], {}, window_s=1)
    agg.on_batch(batch([5.0, 5.0], 0))
    [first] = agg.on_batch(batch([7.0, 7.0], 1.5))
    assert first.data["tags"]["a"]["last"] == 5.0
    [second] = agg.flush(0)
    assert second.data["tags"]["a"] == {
        "n": 1, "bad": 0, "unit": "", "min": 7.0, "max": 7.0, "mean": 7.0, "std": 0.0, "last": 7.0,
    }


def test_partial_batches_and_unknown_tags() -> None:
    agg = WindowAggregator("m1", ["a", "b"], {}, window_s=60)
    agg.on_batch(batch([3.0], 0, tags=("b",)))
    [event] = agg.flush(0)
    assert set(event.data["tags"]) == {"b"}
    with pytest.raises(KeyError, match="not built for"):
        agg.on_batch(batch([3.0], 0, tags=("zzz",)))
