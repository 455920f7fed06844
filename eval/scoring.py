"""The benchmarks' scores, written from their published definitions.

NAB: A. Lavin and S. Ahmad, "Evaluating real-time anomaly detection algorithms - the
Numenta Anomaly Benchmark", IEEE ICMLA 2015, and NAB's documentation (standard profile).
SKAB: I. D. Katser and V. O. Kozitsin, "Skoltech Anomaly Benchmark (SKAB)", Kaggle, 2020:
point-wise binary classification after the leading anomaly-free part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

STANDARD = {"tp": 1.0, "fp": 0.11, "fn": 1.0}
PROFILES = {"standard": STANDARD, "reward_low_fp": {"tp": 1.0, "fp": 0.22, "fn": 1.0},
            "reward_low_fn": {"tp": 1.0, "fp": 0.11, "fn": 2.0}}
"""NAB v1.1's three application profiles: weights of a detected window, a false positive, a
missed window."""
PROBATION = 0.15
PROBATION_CAP_ROWS = 5000
"""NAB's probationary period: the first 15 % of a file, but at most 15 % of 5,000 rows (750),
where detections are not scored (NAB's `getProbationPeriod`: min(floor(0.15 n), 0.15 x 5000)).
Its detectors learn there; a long file's anomalies after row 750 are scored."""


def probation_rows(rows: int) -> int:
    return int(min(math.floor(PROBATION * rows), PROBATION * PROBATION_CAP_ROWS))


def scaled_sigmoid(y: float) -> float:
    """NAB's weight of a detection at relative position y (-1: window start, 0: its end,
    > 0: after it): 2 / (1 + e^(5y)) - 1, and -1 far past a window (y > 3)."""
    return -1.0 if y > 3.0 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


@dataclass(frozen=True, slots=True)
class NabResult:
    raw: float
    normalized: float
    """100 for a perfect detector, 0 for one that never detects (NAB's normalization)."""
    windows: int
    detected: int
    false_positives: int


def nab_score(rows: int, windows: Sequence[tuple[int, int]], detections: Sequence[int],
              profile: dict[str, float] = STANDARD) -> NabResult:
    """Only the first detection in a window counts, weighted by how early it is; a detection
    outside every window costs fp x the sigmoid of its distance past the last window (the
    full fp before any window); every missed window costs fn.

    Detections in the probationary period are not false positives here, but one inside a
    window there counts (the task asks for every window to be detected).
    """
    probation = probation_rows(rows)
    top = scaled_sigmoid(-1.0)
    hit: set[int] = set()
    score, false_positives = 0.0, 0
    for i in sorted(detections):
        inside = [k for k, (a, b) in enumerate(windows) if a <= i <= b]
        if inside:
            k = inside[0]
            if k in hit:
                continue
            hit.add(k)
            a, b = windows[k]
            score += profile["tp"] * scaled_sigmoid(-(b - i + 1) / (b - a + 1)) / top
            continue
        if i < probation:
            continue
        before = [(a, b) for a, b in windows if b < i]
        if before:
            a, b = before[-1]
            weight = scaled_sigmoid(abs(b - i) / max(b - a, 1))
        else:
            weight = -1.0
        score += profile["fp"] * weight
        false_positives += 1
    score -= profile["fn"] * (len(windows) - len(hit))
    null = -profile["fn"] * len(windows)
    perfect = profile["tp"] * len(windows)
    normalized = 100.0 * (score - null) / (perfect - null) if windows else 0.0
    return NabResult(score, normalized, len(windows), len(hit), false_positives)


def pooled(results: Sequence[NabResult], profile: dict[str, float] = STANDARD) -> float:
    """NAB's corpus score: the files' raw scores summed, then normalized once (100 perfect,
    0 null); a mean of per-file normalized scores is another, non-comparable number."""
    raw = sum(r.raw for r in results)
    windows = sum(r.windows for r in results)
    null, perfect = -profile["fn"] * windows, profile["tp"] * windows
    return 100.0 * (raw - null) / (perfect - null) if windows else 0.0


@dataclass(frozen=True, slots=True)
class PointResult:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def f1(self) -> float:
        return 2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1)

    @property
    def false_alarm_rate(self) -> float:
        return self.fp / max(self.fp + self.tn, 1)

    @property
    def missed_alarm_rate(self) -> float:
        return self.fn / max(self.fn + self.tp, 1)

    def __add__(self, other: PointResult) -> PointResult:
        return PointResult(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                           self.tn + other.tn)


def pointwise(predicted: npt.NDArray[np.bool_], labels: npt.NDArray[np.int8]) -> PointResult:
    truth = labels.astype(bool)
    return PointResult(int((predicted & truth).sum()), int((predicted & ~truth).sum()),
                       int((~predicted & truth).sum()), int((~predicted & ~truth).sum()))
