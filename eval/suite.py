"""The shipped defaults scored on labelled files, each benchmark by its own protocol.

Nothing here is selected or tuned: each rule is the config model's default for its kind,
given only what the protocol gives every detector: NAB its probationary period as the
warm-up (learning online from the first row), SKAB the first 400 rows of each file; the
bearing default's bands follow from the bearing's defect frequencies (`eval.cwru` runs it).
tests/integration/test_detection_quality.py holds these figures to floors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.config.detection import (
    Band,
    BandRmsRule,
    DetectorRule,
    MsetRule,
    NoveltyRule,
    PcaRule,
)
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


def defect_frequencies(shaft_hz: float, balls: int, ball_mm: float, pitch_mm: float,
                       contact_deg: float = 0.0) -> dict[str, float]:
    """A rolling bearing's defect frequencies (Hz) from its geometry, the inner race turning
    at shaft_hz and the outer one still (docs/detection.md, "Bands from a bearing")."""
    r = ball_mm / pitch_mm * math.cos(math.radians(contact_deg))
    return {"ftf": shaft_hz / 2 * (1 - r), "bpfo": balls * shaft_hz / 2 * (1 - r),
            "bpfi": balls * shaft_hz / 2 * (1 + r),
            "bsf": pitch_mm / (2 * ball_mm) * shaft_hz * (1 - r * r)}


def bearing_lines(shaft_hz: float, balls: int, ball_mm: float, pitch_mm: float,
                  contact_deg: float = 0.0) -> dict[str, float]:
    """The lines a bearing's bands watch, lowest first: its defect frequencies, the shaft's
    and twice the ball spin (a ball defect strikes both races once per spin turn)."""
    lines = defect_frequencies(shaft_hz, balls, ball_mm, pitch_mm, contact_deg)
    lines.update(shaft=shaft_hz, bsf2=2 * lines["bsf"])
    return dict(sorted(lines.items(), key=lambda item: item[1]))


CWRU_DE_BEARING = bearing_lines(1797 / 60, 9, 7.94, 39.04)
"""The CWRU drive-end bearing (SKF 6205-2RS JEM: 9 balls of 0.3126 in on a 1.537 in pitch,
0°) at 1,797 rpm: cage 11.9, shaft 29.95, ball spin 70.6 and 141.2, outer race 107.4, inner
race 162.2 Hz (the dataset's figures)."""
BEARING_FFT_SAMPLES = 16384
"""At 48 kHz, 2.93 Hz bins: the least power of two whose ±3-bin bands keep 2×BSF (141.2 Hz)
and BPFI (162.2 Hz), 21 Hz apart, in bands of their own."""
BEARING_EDGE_BINS = 3
"""Each line's band reaches this many bins either side: a Hann-windowed tone three bins
inside an edge keeps its leakage in the band (docs/detection.md), and the 1-2 % slip of the
rolling elements (about 3 Hz at BPFI) stays inside too."""
BEARING_RESONANCE_HZ = (2000.0, 4000.0)
"""Where a defect's impacts ring the bearing and its housing: broadband. The healthy run's
1-10 kHz is broadband noise but for a line at 1.44 kHz and a cluster of lines 120 Hz apart
at 4.03-4.38 kHz (twice the 60 Hz mains: electrical) with its 2nd harmonic at 8.41 kHz; the
band is the span between them. 2-10 kHz would be 86 % the cluster's power, and measure it."""


def bearing_default(tag: str, sample_rate_hz: float, warmup_blocks: int,
                    lines: dict[str, float] = CWRU_DE_BEARING) -> BandRmsRule:
    """`band_rms` on a bearing's vibration: a band around each defect frequency in `lines`
    and the resonance band, each at 3 × its learned level (the model's default ratio)."""
    df = sample_rate_hz / BEARING_FFT_SAMPLES
    half = BEARING_EDGE_BINS * df
    bands = [Band(name=name, low_hz=max(0.0, f - half), high_hz=f + half)
             for name, f in lines.items()]
    bands.append(Band(name="resonance", low_hz=BEARING_RESONANCE_HZ[0],
                      high_hz=BEARING_RESONANCE_HZ[1]))
    return BandRmsRule(kind="band_rms", device=DEVICE, tags=[tag], name="bearing",
                       sample_rate_hz=sample_rate_hz, fft_samples=BEARING_FFT_SAMPLES,
                       continuous=True, bands=bands, warmup_blocks=warmup_blocks)


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
