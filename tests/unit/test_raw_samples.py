"""`samples` events (agent/detect/raw.py) of a subscribed device: rows are the union of its
tags' notification times, so a tag's nil is either a bad sample or no sample then; issue 20
found the two indistinguishable and dt_ms going negative."""

from __future__ import annotations

import numpy as np

from agent.detect.raw import RawSamples
from agent.events import SAMPLES, Event, decode, encode
from drivers.samples import Quality, SampleBatch

S = 1_000_000_000
MS = 1_000_000
T0 = 1_800_000_000 * S


def batch(time_ms: int, mono_ms: int, **samples: float | None) -> SampleBatch:
    """A batch at `time_ms` after T0 (None: a BAD sample; a list: an array's elements)."""
    tags, values, quality = [], [], []
    for tag, value in samples.items():
        for item in value if isinstance(value, list) else [value]:
            tags.append(tag)
            values.append(np.nan if item is None else item)
            quality.append(Quality.BAD if item is None else Quality.GOOD)
    return SampleBatch("oven", tuple(tags), np.array(values), np.array(quality, dtype=np.uint8),
                       time_ns=T0 + time_ms * MS, mono_ns=mono_ms * MS)


def window(raw: RawSamples, *batches: SampleBatch) -> Event:
    for b in batches:
        assert raw.on_batch(b) == []
    [event] = raw.flush(T0 + 10 * S)
    assert event.kind == SAMPLES
    return event


def test_a_bad_sample_and_no_sample_are_told_apart() -> None:
    raw = RawSamples("oven", ["temp", "door"], window_s=60)
    event = window(raw, batch(0, 0, temp=20.5), batch(100, 100, door=1.0),
                   batch(200, 200, temp=None), batch(300, 300, temp=20.7, door=0.0))
    assert event.data["dt_ms"] == [0, 100, 200, 300]
    assert event.data["tags"] == {"temp": [20.5, None, None, 20.7],
                                  "door": [None, 1.0, None, 0.0]}
    # temp was read bad at row 2; its nil at row 1, and door's at 0 and 2, are "not sampled".
    assert event.data["bad"] == {"temp": [2]}


def test_rows_are_in_time_order_whatever_order_the_batches_came_in() -> None:
    """A publish's queued values, or a poll beside the subscription, can be older than the
    batch before them: dt_ms went negative."""
    raw = RawSamples("oven", ["temp", "power"], window_s=60)
    event = window(raw, batch(500, 0, power=7.0), batch(200, 10, temp=20.0),
                   batch(900, 20, power=None), batch(100, 30, temp=19.0))
    assert event.data["t0_ns"] == T0 + 100 * MS
    assert event.data["dt_ms"] == [0, 100, 400, 800]
    assert event.data["tags"] == {"power": [None, None, 7.0, None],
                                  "temp": [19.0, 20.0, None, None]}
    assert event.data["bad"] == {"power": [3]}


def test_an_array_is_as_many_rows_at_its_time() -> None:
    raw = RawSamples("oven", ["wave", "temp"], window_s=60)
    event = window(raw, batch(0, 0, wave=[0.1, None, 0.3], temp=5.0), batch(50, 50, temp=6.0))
    assert event.data["dt_ms"] == [0, 0, 0, 50]
    assert event.data["tags"] == {"wave": [0.1, None, 0.3, None],
                                  "temp": [5.0, None, None, 6.0]}
    assert event.data["bad"] == {"wave": [1]}


def test_batches_without_a_raw_tag_make_no_rows_and_all_good_means_no_bad_key() -> None:
    raw = RawSamples("oven", ["temp"], window_s=60)
    event = window(raw, batch(0, 0, temp=1.0), batch(10, 10, other=3.0), batch(20, 20, temp=2.0))
    assert event.data == {"t0_ns": T0, "dt_ms": [0, 20], "tags": {"temp": [1.0, 2.0]}}
    assert raw.flush(T0 + 20 * S) == []


def test_the_wire_form_keeps_bad_and_decodes_as_before() -> None:
    raw = RawSamples("oven", ["temp"], window_s=60)
    event = window(raw, batch(0, 0, temp=None), batch(10, 10, temp=2.0))
    data = decode(encode(event, gateway="gw", seq=1)).data
    assert data == {"t0_ns": T0, "dt_ms": [0, 10], "tags": {"temp": [None, 2.0]},
                    "bad": {"temp": [0]}}
