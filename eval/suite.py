"""The configurations under evaluation and their scores: one configuration per dataset.

Chosen as docs/detection.md explains (never per file). The test
tests/integration/test_detection_quality.py asserts the targets on these same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.config.detection import PcaRule, ZScoreRule
from eval.datasets import SKAB_COLUMNS, load_nab, nab_files, skab_valve1
from eval.harness import DEVICE, detections, flagged, replay
from eval.scoring import NabResult, PointResult, nab_score, pointwise

SKAB_LEARN_ROWS = 400
"""The leading anomaly-free rows of each SKAB file (the benchmark's convention): the PCA
model learns on them (its warmup_samples) and they are not scored."""

SKAB_TAGS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Voltage",
             "Volume Flow RateRMS")
"""Every tag but the two temperatures, which only follow the slow heating of the rig."""

SKAB_RULE = PcaRule(kind="pca", device=DEVICE, tags=list(SKAB_TAGS),
                    warmup_samples=SKAB_LEARN_ROWS, explained_variance=0.9,
                    smoothing_halflife_samples=6.6, threshold_factor=1.0)
SKAB_RULE_ALL_TAGS = SKAB_RULE.model_copy(update={"tags": list(SKAB_COLUMNS)})

NAB_RULE = ZScoreRule(kind="zscore", device=DEVICE, tags=["value"], threshold_z=3.25,
                      clear_z=1.625, smoothing_halflife_samples=24,
                      baseline_halflife_samples=3000, warmup_samples=864,
                      min_duration_s=3300)
"""A z-score of the value smoothed over ~2 h (at 5-minute samples) against a baseline that
follows over ~10 days; an episode once it held for 55 minutes."""


@dataclass(frozen=True, slots=True)
class SkabResult:
    total: PointResult
    per_file: dict[str, PointResult]


def skab(folder: Path, rule: PcaRule = SKAB_RULE, files: int | None = None) -> SkabResult:
    per_file = {}
    for series in skab_valve1(folder)[:files]:
        assert series.labels is not None
        events, _ = replay(series, [rule], rule.tags)
        predicted = flagged(series, events)[SKAB_LEARN_ROWS:]
        per_file[series.name] = pointwise(predicted, series.labels[SKAB_LEARN_ROWS:])
    total = PointResult(0, 0, 0, 0)
    for result in per_file.values():
        total = total + result
    return SkabResult(total, per_file)


def nab(folder: Path, names: list[str] | None = None,
        rule: ZScoreRule = NAB_RULE) -> dict[str, NabResult]:
    out = {}
    for name in names or nab_files(folder):
        series = load_nab(folder, name)
        events, rows = replay(series, [rule])
        out[name] = nab_score(len(series.time_ns), series.windows, detections(events, rows))
    return out
