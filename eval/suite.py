"""The shipped defaults scored on labelled files, each benchmark by its own protocol.

Nothing here is selected or tuned: each rule is the config model's default for its kind,
given only what the protocol gives every detector: NAB its probationary period as the
warm-up (learning online from the first row), SKAB the first 400 rows of each file.
tests/integration/test_detection_quality.py holds these figures to floors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.config.detection import DetectorRule, MsetRule, NoveltyRule, PcaRule
from eval.datasets import Series, load_nab, nab_files, skab_files
from eval.harness import DEVICE, detections, flagged, replay
from eval.scoring import (
    PROFILES,
    NabResult,
    PointResult,
    nab_score,
    pointwise,
    pooled,
    probation_rows,
)

SKAB_LEARN_ROWS = 400
"""SKAB's protocol: `train_test_split(train_size=400, shuffle=False)` in each file."""


def univariate_default(tag: str, warmup_samples: int) -> NoveltyRule:
    """The univariate default on one tag (every other setting the model's default)."""
    return NoveltyRule(kind="novelty", device=DEVICE, tags=[tag], warmup_samples=warmup_samples)


SKAB_STEADY_TAGS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Voltage",
                    "Volume Flow RateRMS")
"""Every SKAB tag but the two temperatures, which only follow the slow heating of the rig."""


def multivariate_default(series: Series) -> DetectorRule:
    """The multivariate default (`mset`, every setting the model's default) on a SKAB file,
    learning on its first 400 rows."""
    return MsetRule(kind="mset", device=DEVICE, tags=list(SKAB_STEADY_TAGS),
                    warmup_samples=SKAB_LEARN_ROWS)


def pca_rule(series: Series) -> DetectorRule:
    """The former multivariate default (`pca`, T² and Q at 99.9 % control limits), for
    comparison."""
    return PcaRule(kind="pca", device=DEVICE, tags=list(SKAB_STEADY_TAGS),
                   warmup_samples=SKAB_LEARN_ROWS, explained_variance=0.85, confidence=0.999)


def skab_reference(series: Series) -> DetectorRule:
    """SKAB's T² + Q reference (99.9 % control limits, 85 % explained variance), on every tag."""
    return PcaRule(kind="pca", device=DEVICE, tags=list(series.columns),
                   warmup_samples=SKAB_LEARN_ROWS, explained_variance=0.85, confidence=0.999)


@dataclass(frozen=True, slots=True)
class NabReport:
    scores: dict[str, float]
    """Per profile: the pooled normalized score (`scoring.pooled`)."""
    files: dict[str, dict[str, NabResult]]
    """Per file, per profile."""


def nab(folder: Path, names: Sequence[str] | None = None) -> NabReport:
    files: dict[str, dict[str, NabResult]] = {}
    for name in names or nab_files(folder):
        series = load_nab(folder, name)
        rule = univariate_default("value", probation_rows(len(series.time_ns)))
        events, rows = replay(series, [rule])
        found = detections(events, rows)
        files[name] = {profile: nab_score(len(series.time_ns), series.windows, found, weights)
                       for profile, weights in PROFILES.items()}
    scores = {profile: pooled([f[profile] for f in files.values()], weights)
              for profile, weights in PROFILES.items()}
    return NabReport(scores, files)


@dataclass(frozen=True, slots=True)
class SkabReport:
    total: PointResult
    sets: dict[str, PointResult]
    files: dict[str, PointResult]
    """Per file, as `<set>/<file>`."""


def skab(folder: Path, rule_of: Callable[[Series], DetectorRule],
         sets: Sequence[str] | None = None) -> SkabReport:
    """Point-wise after each file's first 400 rows, pooled; `rule_of` gives a file's rule."""
    files: dict[str, PointResult] = {}
    by_set: dict[str, PointResult] = {}
    for name, series in skab_files(folder, sets):
        assert series.labels is not None
        rule = rule_of(series)
        events, _ = replay(series, [rule], rule.tags)
        predicted = flagged(series, events)[SKAB_LEARN_ROWS:]
        files[name] = pointwise(predicted, series.labels[SKAB_LEARN_ROWS:])
        key = name.split("/")[0]
        by_set[key] = by_set.get(key, PointResult(0, 0, 0, 0)) + files[name]
    total = PointResult(0, 0, 0, 0)
    for result in files.values():
        total = total + result
    return SkabReport(total, by_set, files)


def skab_flag_all(folder: Path, sets: Sequence[str] | None = None) -> PointResult:
    """The baseline a detector must beat: every scored row flagged."""
    total = PointResult(0, 0, 0, 0)
    for _, series in skab_files(folder, sets):
        assert series.labels is not None
        truth = series.labels[SKAB_LEARN_ROWS:].astype(bool)
        total = total + PointResult(int(truth.sum()), int((~truth).sum()), 0, 0)
    return total
