"""A subscription's batches bring ever new tag tuples: the detectors' layout caches stay
bounded, and a layout forgotten and derived again computes the same."""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.detect import tag_layouts
from agent.detect.base import Detector
from agent.detect.tag_layouts import TagLayouts
from agent.events import Event
from agent.testing import device_detector, offline_config
from drivers.samples import SampleBatch

S = 1_000_000_000
T0 = 1_700_000_000 * S
TAGS = tuple(f"t{i}" for i in range(12))


def test_the_oldest_layout_goes_first_and_lookups_are_plain() -> None:
    layouts: TagLayouts[int] = TagLayouts(capacity=2)
    layouts[("a",)] = 1
    layouts[("b",)] = 2
    layouts[("a",)] = 3  # a known tuple replaced: nothing forgotten
    assert dict(layouts) == {("a",): 3, ("b",): 2}
    layouts[("c",)] = 4
    assert dict(layouts) == {("b",): 2, ("c",): 4}
    assert layouts.get(("a",)) is None


def every_kind_detector(tmp_path: Path) -> Detector:
    """Every kind of detector `make_detector` builds for a device: window aggregates,
    quality, changes, a machine, univariate and pca rules."""
    tags = "\n".join(f"      - {{name: {t}, address: {2 * i}, type: float32}}"
                     for i, t in enumerate(TAGS))
    return device_detector(offline_config(tmp_path, f"""
devices:
  - name: m
    protocol: modbus-tcp
    host: 127.0.0.1
    tags:
{tags}
machines:
  - {{name: press, device: m, power_tag: t0, idle_above_w: 1, running_above_w: 5}}
detectors:
  - {{device: m, kind: zscore, tags: [t1, t2, t3], warmup_samples: 20}}
  - {{device: m, kind: limits, tags: [t4, t5], high: 100}}
  - {{device: m, kind: pca, tags: [t6, t7, t8], warmup_samples: 50}}
"""))


def subset_batches(count: int, seed: int, start_s: float) -> list[SampleBatch]:
    """What an OPC UA subscription publishes: the tags that changed, in changing orders."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        pick = rng.permutation(len(TAGS))[:rng.integers(3, len(TAGS) + 1)]
        t = int((start_s + i) * S)
        out.append(SampleBatch("m", tuple(TAGS[j] for j in pick),
                               rng.normal(10.0, 1.0, len(pick)),
                               np.zeros(len(pick), dtype=np.uint8), T0 + t, t))
    return out


def test_changing_tag_tuples_do_not_grow_the_detectors(tmp_path: Path) -> None:
    detector = every_kind_detector(tmp_path)
    first = subset_batches(3000, seed=1, start_s=0)  # beyond every cache's capacity
    later = subset_batches(3000, seed=2, start_s=3000)  # and 3,000 other tuples
    tracemalloc.start()  # from before the first: what the caches hold then is traced too
    try:
        for b in first:
            detector.on_batch(b)
        gc.collect()
        full = tracemalloc.get_traced_memory()[0]
        for b in later:
            detector.on_batch(b)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - full
    finally:
        tracemalloc.stop()
    # Kept forever, 3,000 tuples' layouts take megabytes (about 2 kB a tuple here).
    assert grown < 200_000, f"{grown} bytes kept for 3,000 more tag tuples seen once"


def test_a_layout_derived_again_computes_the_same(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same batches through a detector that keeps one layout (it derives one for nearly
    every batch) and one that keeps them all: the same events."""
    with monkeypatch.context() as patch:
        patch.setattr(tag_layouts, "LAYOUTS_KEPT", 1)
        forgetful = every_kind_detector(tmp_path / "a")
    keeping = every_kind_detector(tmp_path / "b")
    batches = subset_batches(600, seed=3, start_s=0)
    batches[400:450] = [replace(b, values=b.values + 50.0) for b in batches[400:450]]

    def seen(events: list[Event]) -> list[tuple[str, int, dict[str, Any]]]:
        return [(e.kind, e.time_ns, {k: v for k, v in e.data.items() if k != "episode"})
                for e in events]

    for b in batches:
        assert seen(forgetful.on_batch(b)) == seen(keeping.on_batch(b))
    flushed = seen(keeping.flush(T0 + 600 * S))
    assert {kind for kind, _, _ in flushed} >= {"window"}
    assert seen(forgetful.flush(T0 + 600 * S)) == flushed
