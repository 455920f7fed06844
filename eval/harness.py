"""Runs the agent's own detectors over a labelled series, one row per SampleBatch.

The detectors are built by `agent.detect.rules` from the same rule models as the agent's
`detectors:` section; the monotonic clock of a replay is the series' own time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agent.config.detection import DetectorRule
from agent.detect.base import DetectorChain
from agent.detect.rules import rule_detectors
from agent.events import Event
from drivers.samples import SampleBatch
from eval.datasets import Series

DEVICE = "replay"


def replay(series: Series, rules: Sequence[DetectorRule],
           tags: Sequence[str] | None = None) -> tuple[list[Event], list[int]]:
    """Every event, and the row at which each came out (the batch that produced it)."""
    names = tuple(tags or series.columns)
    pick = [series.columns.index(t) for t in names]
    chain = DetectorChain(rule_detectors(DEVICE, [(f"r{i}", r) for i, r in enumerate(rules)]))
    quality = np.zeros(len(names), dtype=np.uint8)
    t0 = int(series.time_ns[0])
    events: list[Event] = []
    rows: list[int] = []
    for i in range(len(series.time_ns)):
        t = int(series.time_ns[i])
        batch = SampleBatch(DEVICE, names, np.ascontiguousarray(series.values[i, pick]), quality,
                            t, t - t0 + 1)
        out = chain.on_batch(batch)
        events += out
        rows += [i] * len(out)
    last = len(series.time_ns) - 1
    out = chain.flush(int(series.time_ns[last]) + 1)
    return events + out, rows + [last] * len(out)


def detections(events: Sequence[Event], rows: Sequence[int]) -> list[int]:
    """The rows at which an episode was announced (its `start` event came out)."""
    return [row for e, row in zip(events, rows, strict=True) if e.data.get("phase") == "start"]


def flagged(series: Series, events: Sequence[Event]) -> npt.NDArray[np.bool_]:
    """Point-wise prediction: rows from an episode's start to its end (end excluded)."""
    out = np.zeros(len(series.time_ns), dtype=bool)
    for e in events:
        if e.data.get("phase") == "end":
            out |= (series.time_ns >= e.data["start_ns"]) & (series.time_ns < e.data["end_ns"])
    return out


def score_trace(series: Series, rule: DetectorRule,
                tags: Sequence[str] | None = None) -> npt.NDArray[np.float64]:
    """The rule's score after each row (NaN while it learns): what selection reads, not labels."""
    names = tuple(tags or series.columns)
    pick = [series.columns.index(t) for t in names]
    chain = DetectorChain(rule_detectors(DEVICE, [("r0", rule)]))
    quality = np.zeros(len(names), dtype=np.uint8)
    t0 = int(series.time_ns[0])
    out = np.full(len(series.time_ns), np.nan)
    for i in range(len(series.time_ns)):
        t = int(series.time_ns[i])
        chain.on_batch(SampleBatch(DEVICE, names, np.ascontiguousarray(series.values[i, pick]),
                                   quality, t, t - t0 + 1))
        (out[i],) = chain.scores().values()
    return out
