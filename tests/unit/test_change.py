"""Report-on-change: deadband, bad samples, the first value, and text values."""

from __future__ import annotations

import numpy as np

from agent.detect.change import ChangeReporter
from agent.events import CHANGE
from drivers.samples import Quality, SampleBatch


def batch(values: dict[str, float], bad: tuple[str, ...] = (), texts: dict[str, str] | None = None) -> SampleBatch:
    tags = tuple(values)
    return SampleBatch(
        "press", tags, np.array([values[t] for t in tags], dtype=np.float64),
        np.array([Quality.BAD if t in bad else Quality.GOOD for t in tags], dtype=np.uint8),
        time_ns=1, mono_ns=1, texts=texts or {},
    )


def changes(reporter: ChangeReporter, b: SampleBatch) -> dict[str, object]:
    events = reporter.on_batch(b)
    assert all(e.kind == CHANGE for e in events)
    return {t: v["value"] for e in events for t, v in e.data["tags"].items()}  # type: ignore[union-attr]


def test_moves_beyond_the_deadband_are_reported_and_smaller_ones_are_not() -> None:
    reporter = ChangeReporter("press", {"temp_c": 0.5, "state": 0.0}, {"temp_c": "°C"})
    assert changes(reporter, batch({"temp_c": 20.0, "state": 1, "power_w": 5})) == {"temp_c": 20.0, "state": 1.0}
    assert changes(reporter, batch({"temp_c": 20.4, "state": 1, "power_w": 6})) == {}
    # Measured from the last value reported, so slow drift is reported once it adds up.
    assert changes(reporter, batch({"temp_c": 20.6, "state": 1, "power_w": 7})) == {"temp_c": 20.6}
    assert changes(reporter, batch({"temp_c": 20.6, "state": 2, "power_w": 7})) == {"state": 2.0}


def test_bad_samples_are_never_reported_as_changes() -> None:
    reporter = ChangeReporter("press", {"state": 0.0}, {})
    assert changes(reporter, batch({"state": 1})) == {"state": 1.0}
    assert changes(reporter, batch({"state": 7}, bad=("state",))) == {}
    assert changes(reporter, batch({"state": 1})) == {}


def test_text_values_are_reported_when_they_change() -> None:
    reporter = ChangeReporter("press", {}, {})
    events = reporter.on_batch(batch({"x": 1}, texts={"recipe": "A-12"}))
    assert events[0].data["tags"] == {"recipe": {"value": "A-12", "previous": None, "unit": ""}}
    assert reporter.on_batch(batch({"x": 1}, texts={"recipe": "A-12"})) == []
    assert changes(reporter, batch({"x": 1}, texts={"recipe": "B-3"})) == {"recipe": "B-3"}
