"""The anomaly detectors: what each catches, when its episode starts and ends, and what the
events say. Pure and fast; tests/integration/test_kernel_forms.py runs this file again with
numba's JIT and as plain Python, so every form of the kernels is tested.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from agent.config.detection import (
    DetectorRule,
    DriftRule,
    LimitsRule,
    MsetRule,
    NoveltyRule,
    PcaRule,
    RmsRule,
    StuckRule,
    ZScoreRule,
)
from agent.detect.base import DetectorChain, ScoringDetector
from agent.detect.kernels.mset import cholesky_solve, memory_size
from agent.detect.kernels.pca import jacobi_eigh
from agent.detect.rules import rule_detectors
from agent.events import ANOMALY, LIMIT, Event
from drivers.samples import Quality, SampleBatch

S = 1_000_000_000
T0 = 1_700_000_000 * S


def chain(*rules: DetectorRule) -> DetectorChain:
    return DetectorChain(rule_detectors("m1", [(r.name or f"{r.kind}-{i}", r)
                                               for i, r in enumerate(rules, 1)]))


def batch(tags: Sequence[str], values: Sequence[float], t_s: float,
          quality: Sequence[int] | None = None) -> SampleBatch:
    return SampleBatch("m1", tuple(tags), np.asarray(values, dtype=np.float64),
                       np.asarray(quality or [0] * len(values), dtype=np.uint8),
                       T0 + int(t_s * S), int(t_s * S))


def feed(detector: DetectorChain, tag: str, values: Sequence[float], start_s: float = 0.0,
         step_s: float = 1.0) -> list[tuple[float, Event]]:
    """One sample per batch; every event with the time (s) of the batch that produced it."""
    out = []
    for i, v in enumerate(values):
        t = start_s + i * step_s
        out += [(t, e) for e in detector.on_batch(batch([tag], [v], t))]
    return out


def phases(events: Sequence[tuple[float, Event]]) -> list[tuple[float, str]]:
    return [(t, e.data["phase"]) for t, e in events]


def limits(**kw: Any) -> LimitsRule:
    return LimitsRule(kind="limits", device="m1", tags=["temp"], context_samples=2, **kw)


def test_limit_violation_reports_how_long_and_how_far_outside_with_hysteresis_and_min_duration() -> None:
    det = chain(limits(high=80.0, hysteresis=2.0, min_duration_s=2.0))
    # 81 at t=3 for one sample: shorter than min_duration_s, no violation.
    # 85..90 from t=6; 79.5 at t=10 is inside the hysteresis band (not yet clear); 77 at t=11 is.
    values = [70, 71, 72, 81, 70, 70, 85, 90, 86, 82, 79.5, 77, 70, 71, 72]
    events = feed(det, "temp", values)
    assert phases(events) == [(8.0, "start"), (13.0, "end")]  # end once 2 samples followed
    start, end = events[0][1], events[1][1]
    assert start.kind == end.kind == LIMIT
    assert start.data["start_ns"] == T0 + 6 * S and start.time_ns == T0 + 6 * S
    assert start.data["episode"] == end.data["episode"]
    assert end.data["bound"] == "high" and end.data["limit"] == 80.0
    assert end.data["max_excess"] == 10.0 and end.data["peak_value"] == 90.0
    assert end.data["peak_ns"] == T0 + 7 * S
    assert end.data["end_ns"] == T0 + 11 * S and end.data["duration_s"] == 5.0
    assert end.data["tags"]["temp"]["after"] == [70.0, 71.0]
    # Before: the samples up to the moment the violation was recognised (t=8).
    assert start.data["tags"]["temp"]["before"] == [90.0, 86.0]


def test_low_limit_and_rate_of_change_are_separate_checks() -> None:
    det = chain(limits(low=10.0, max_rate_per_s=5.0))
    events = feed(det, "temp", [20, 21, 40, 41, 9, 12, 13, 14])
    kinds = [(t, e.data["phase"], e.data["bound"]) for t, e in events]
    assert (2.0, "start", "rate") in kinds and (4.0, "start", "low") in kinds
    rate_ends = [e.data["max_excess"] for _, e in events
                 if e.data["phase"] == "end" and e.data["bound"] == "rate"]
    assert rate_ends == [19.0 - 5.0, 32.0 - 5.0]  # 21 -> 40, then 41 -> 9, in 1 s each


def test_bad_quality_samples_never_count_as_readings() -> None:
    det = chain(limits(high=80.0))
    events = []
    for i in range(5):
        events += det.on_batch(batch(["temp"], [500.0], i, quality=[Quality.BAD]))
    assert events == [] and det.flush(T0) == []


def test_zscore_warms_up_then_catches_a_step_and_ignores_noise() -> None:
    rng = np.random.default_rng(1)
    rule = ZScoreRule(kind="zscore", device="m1", tags=["temp"], threshold_z=5.0,
                      warmup_samples=50, baseline_halflife_samples=200)
    det = chain(rule)
    det.on_batch(batch(["temp"], [20.0], 0))
    assert math.isnan(det.scores()["zscore-1:temp"]), "no score while warming up"
    normal = list(20 + rng.normal(0, 0.5, 300))
    events = feed(det, "temp", normal, start_s=1)
    assert events == []
    assert abs(det.scores()["zscore-1:temp"]) < 5.0
    events = feed(det, "temp", [26.0] * 5, start_s=301)
    assert phases(events) == [(301.0, "start")]
    assert events[0][1].kind == ANOMALY and events[0][1].data["detector"] == "zscore"


def test_zscore_baseline_does_not_learn_the_anomaly() -> None:
    """A long anomaly stays one: samples inside an episode never update the baseline."""
    rule = ZScoreRule(kind="zscore", device="m1", tags=["temp"], threshold_z=4.0,
                      warmup_samples=20, baseline_halflife_samples=10)
    det = chain(rule)
    feed(det, "temp", [20.0 + 0.1 * (i % 3) for i in range(40)])
    events = feed(det, "temp", [30.0] * 200, start_s=40)
    assert phases(events) == [(40.0, "start")]


def novelty(**kw: Any) -> NoveltyRule:
    return NoveltyRule(kind="novelty", device="m1", tags=["temp"], warmup_samples=200, **kw)


def saw(n: int, period: int = 20, low: float = 10.0, high: float = 30.0) -> list[float]:
    """A periodic ramp with a little noise: its transitions are all learned within a period."""
    rng = np.random.default_rng(7)
    return [low + (high - low) * (i % period) / period + rng.normal(0, 0.01) for i in range(n)]


def test_novelty_stays_quiet_on_a_learned_pattern_and_catches_a_new_transition() -> None:
    det = chain(novelty())
    det.on_batch(batch(["temp"], [10.0], 0))
    assert math.isnan(det.scores()["novelty-1:temp"]), "no score while warming up"
    assert feed(det, "temp", saw(3000), start_s=1) == []
    # In range, but never seen: the ramp jumps from its bottom straight to its middle and back.
    odd = [10.0, 20.0, 10.5, 20.5, 10.0, 21.0] * 3
    events = feed(det, "temp", odd, start_s=3001)
    assert [p for _, p in phases(events)][:1] == ["start"] and events[0][0] <= 3004.0
    assert events[0][1].kind == ANOMALY and events[0][1].data["detector"] == "novelty"
    # The episode ends hold_samples (60) after the last sample over its threshold.
    events = feed(det, "temp", saw(200), start_s=3100)
    assert [p for _, p in phases(events)] == ["end"]
    assert events[0][0] <= 3100 + 70


def test_novelty_level_score_catches_a_slow_shift_inside_the_learned_range() -> None:
    rng = np.random.default_rng(3)
    det = chain(novelty())
    normal = list(20 + rng.normal(0, 1.0, 3000))
    assert feed(det, "temp", normal) == []
    shifted = list(26 + rng.normal(0, 1.0, 300))  # +6 sd: 2 sd inside the warm-up's range
    events = feed(det, "temp", shifted, start_s=3000)
    assert phases(events)[:1] and phases(events)[0][1] == "start"
    assert phases(events)[0][0] < 3000 + 20


def test_novelty_counts_a_burst_like_single_samples_and_skips_garbage() -> None:
    """Batches of many samples per tag give the same episodes as one sample per batch; a NaN
    is skipped, and a value far outside anything seen is new (not an overflow)."""
    values = saw(1500) + [1e300, 20.0, float("nan")] + saw(400)
    one = chain(novelty())
    singles = [(round(t), e.data["phase"]) for t, e in feed(one, "temp", values)]
    burst = chain(novelty())
    out = []
    for start in range(0, len(values), 50):
        part = values[start:start + 50]
        b = SampleBatch("m1", ("temp",) * len(part), np.asarray(part, dtype=np.float64),
                        np.zeros(len(part), dtype=np.uint8), T0 + (start + len(part) - 1) * S,
                        (start + len(part) - 1) * S)
        out += [e.data["phase"] for e in burst.on_batch(b)]
    assert [p for _, p in singles] == out == ["start", "end"]
    assert singles[0] == (1500, "start"), "the 1e300 is new"
    assert math.isfinite(burst.scores()["novelty-1:temp"])


def test_novelty_learned_state_carries_over_a_restart() -> None:
    values = saw(1200)
    first = rule_detectors("m1", [("n", novelty())])[0]
    for i, v in enumerate(values):
        first.on_batch(batch(["temp"], [v], i))
    assert isinstance(first, ScoringDetector)
    saved = first.learned()
    again = rule_detectors("m1", [("n", novelty())])[0]
    assert again.restore(saved) == 1
    fresh = rule_detectors("m1", [("n", novelty())])[0]
    odd = [10.0, 20.0, 10.5, 20.5] * 3
    for d in (again, first, fresh):
        for i, v in enumerate(odd):
            d.on_batch(batch(["temp"], [v], 1200 + i))
    assert again.scores() == first.scores()
    assert math.isnan(fresh.scores()["n:temp"]), "a fresh one is still warming up"


def test_drift_accumulates_a_small_lasting_shift_that_a_zscore_would_miss() -> None:
    rng = np.random.default_rng(2)
    drift = DriftRule(kind="drift", device="m1", tags=["temp"], warmup_samples=200)
    zscore = ZScoreRule(kind="zscore", device="m1", tags=["temp"], warmup_samples=200)
    det = chain(drift, zscore)
    normal = list(rng.normal(0, 1, 200))
    shifted = list(rng.normal(1.0, 1, 100))  # one standard deviation: never 4 sigma away
    events = feed(det, "temp", normal + shifted)
    assert {e.data["detector"] for _, e in events} == {"drift"}
    start = events[0]
    assert 200 < start[0] < 240


def test_stuck_sensor_and_silent_sensor() -> None:
    rule = StuckRule(kind="stuck", device="m1", tags=["flow"], stuck_after_s=30,
                     silent_after_s=10, min_change=0.01, context_samples=0)
    det = chain(rule)
    events = feed(det, "flow", [1.0, 1.5, 2.0] + [2.0 + 0.001 * (i % 2) for i in range(40)])
    assert phases(events) == [(32.0, "start")]  # flat since t=2, for 30 s
    assert events[0][1].data["rule"] == "stuck-1" and events[0][1].data["threshold"] == pytest.approx(30.0)
    events = feed(det, "flow", [5.0], start_s=43)
    assert phases(events) == [(43.0, "end")] and events[0][1].data["duration_s"] == 11.0
    # Then nothing arrives: the clock alone finds the silent sensor.
    assert det.on_tick(50 * S, T0 + 50 * S) == []
    [silent] = det.on_tick(54 * S, T0 + 54 * S)
    # Noticed at the first tick 10 s after the last good sample (ticks come every second).
    assert silent.data["phase"] == "start" and silent.data["start_ns"] == T0 + 54 * S
    assert det.scores()["stuck-1:flow:silent"] == 11.0
    # Bad samples are no delivery either; a good one ends the episode.
    assert det.on_batch(batch(["flow"], [5.0], 60, quality=[Quality.BAD])) == []
    [end] = det.on_batch(batch(["flow"], [5.0], 61))
    assert end.data["phase"] == "end" and end.data["duration_s"] == 61 - 54


def test_rms_of_a_burst_catches_vibration_growing() -> None:
    """Bursts: a tag appears many times in one batch, in time order."""
    rule = RmsRule(kind="rms", device="m1", tags=["vib"], window_samples=32,
                   warmup_samples=256, max_ratio=2.0)
    det = chain(rule)
    t = np.arange(256)
    quiet = np.sin(2 * np.pi * t / 16)
    events: list[Event] = []
    for k in range(4):
        events += det.on_batch(batch(["vib"] * 256, quiet, k))
    assert events == []
    assert det.scores()["rms-1:vib"] == pytest.approx(1 / math.sqrt(2), rel=0.1)
    events = det.on_batch(batch(["vib"] * 256, 3 * quiet, 5))
    assert [e.data["phase"] for e in events] == ["start"]
    assert events[0].data["threshold"] == pytest.approx(2 / math.sqrt(2), rel=0.1)


@pytest.mark.parametrize("min_limit_rms", [None, 1.0])
def test_rms_learned_at_rest_alarms_on_normal_running_unless_its_limit_has_a_floor(
        min_limit_rms: float | None) -> None:
    """Learned on a sensor's noise (the machine off), max_ratio x that level is under the
    running machine's normal vibration: `min_limit_rms` is the least the learned limit is."""
    rule = RmsRule(kind="rms", device="m1", tags=["vib"], window_samples=32,
                   warmup_samples=256, max_ratio=3.0, min_limit_rms=min_limit_rms)
    det = chain(rule)
    rest = 0.01 * np.random.default_rng(2).normal(size=512)
    running = 0.9 * np.sin(2 * np.pi * np.arange(256) / 16)  # RMS 0.64
    events = det.on_batch(batch(["vib"] * 512, rest, 0))
    events += det.on_batch(batch(["vib"] * 256, running, 1))
    if min_limit_rms is None:
        assert [e.data["phase"] for e in events] == ["start"]
        return
    assert events == []
    events = det.on_batch(batch(["vib"] * 256, 3 * running, 2))  # RMS 1.9: over the floor
    assert [e.data["phase"] for e in events] == ["start"]
    assert events[0].data["threshold"] == 1.0


def test_an_episode_inside_a_burst_gets_the_samples_around_its_start_and_end() -> None:
    """A burst that starts and ends an episode and goes on: the context is the samples just
    before the start and just after the end, not the burst's last ones (nor none)."""
    rule = RmsRule(kind="rms", device="m1", tags=["vib"], window_samples=4,
                   warmup_samples=64, max_ratio=2.0, context_samples=3)
    det = chain(rule)
    quiet = np.sin(2 * np.pi * np.arange(256) / 16)
    det.on_batch(batch(["vib"] * 256, quiet, 0))
    loud = np.concatenate([3 * quiet[:64], quiet[64:]])
    start, end = det.on_batch(batch(["vib"] * 256, loud, 1))
    assert (start.data["phase"], end.data["phase"]) == ("start", "end")
    before = start.data["tags"]["vib"]["before"]
    after = end.data["tags"]["vib"]["after"]
    first = next(i for i in range(256) if list(loud[i - 2:i + 1]) == before)
    assert 0 < first < 64, "the samples up to the start, inside the loud part"
    last = next(i for i in range(64, 256) if list(loud[i:i + 3]) == after)
    assert 64 <= last < 250, "the samples right after the end, not the burst's last ones"


def test_pca_catches_tags_that_no_longer_agree_while_each_stays_in_range() -> None:
    rng = np.random.default_rng(3)
    rule = PcaRule(kind="pca", device="m1", name="pump", tags=["current", "flow", "vib"],
                   warmup_samples=300, smoothing_halflife_samples=2,
                   threshold_factor=1.5)
    det = chain(rule)
    tags = ("current", "flow", "vib")

    def row(load: float, flow_offset: float = 0.0) -> list[float]:
        return [10 * load + rng.normal(0, 0.1), 50 * load + flow_offset + rng.normal(0, 0.5),
                2 * load + rng.normal(0, 0.05)]

    events: list[Event] = []
    for i in range(600):
        events += det.on_batch(batch(tags, row(rng.uniform(0.5, 1.0)), i))
    assert events == []
    assert det.scores()["pump"] < 1.0
    # Same load range, but the flow falls short of what the current says (a blocked inlet):
    for i in range(20):
        events += det.on_batch(batch(tags, row(0.9, flow_offset=-10.0), 600 + i))
    assert [e.data["phase"] for e in events] == ["start"]
    start = events[0]
    assert start.data["detector"] == "pca" and start.data["threshold"] == 1.0
    assert set(start.data["tags"]) == set(tags)
    assert len(start.data["tags"]["flow"]["before"]) == 10



def test_a_pca_episode_inside_a_burst_gets_the_rows_before_its_start() -> None:
    """Arrays of a group's tags (OPC UA) bring many rows in one batch: the context of an
    episode that starts inside the burst is the rows just before its start, as many as
    `context_samples`, not those the rest of the burst left in a ring of that size."""
    rng = np.random.default_rng(5)
    rule = PcaRule(kind="pca", device="m1", name="pump", tags=["current", "flow"],
                   warmup_samples=200, threshold_factor=1.5, context_samples=4)
    det = chain(rule)
    load = rng.uniform(0.5, 1.0, 400)
    current = 10 * load + rng.normal(0, 0.1, 400)
    flow = 50 * load + rng.normal(0, 0.5, 400)
    flow[300:] -= 10.0  # from row 300 on, the flow falls short of what the current says

    def burst(first: int, last: int, t_s: float) -> SampleBatch:
        n = last - first  # interleaved rows: current, flow, current, flow ...
        values = np.column_stack([current[first:last], flow[first:last]]).ravel()
        return batch(["current", "flow"] * n, values, t_s)

    assert det.on_batch(burst(0, 250, 0)) == []
    (start,) = det.on_batch(burst(250, 400, 1))
    before = start.data["tags"]["flow"]["before"]
    assert len(before) == 4, "the full context, not what the burst's end left of it"
    first = next(i for i in range(250, 400) if np.allclose(flow[i - 3:i + 1], before))
    assert 296 <= first <= 310, "the rows up to the start, not the burst's last ones"

def test_pca_control_limits_keep_their_confidence_on_normal_operation() -> None:
    """With `confidence`, the thresholds are the textbook limits of T² and Q: on rows drawn
    like the learning rows, the share over either limit is about 1 - confidence for each."""
    rng = np.random.default_rng(11)
    mixing = rng.normal(size=(6, 6))
    tags = [f"t{i}" for i in range(6)]
    rule = PcaRule(kind="pca", device="m1", name="g", tags=tags, warmup_samples=2000,
                   smoothing_halflife_samples=0, explained_variance=0.7, confidence=0.99)
    det = chain(rule)
    over = 0
    rows = 20_000
    for i in range(2000 + rows):
        det.on_batch(batch(tags, list(rng.normal(size=6) @ mixing), i))
        if i >= 2000:
            over += det.scores()["g"] > 1.0
    # Two limits at 1 % each: between one and two in a hundred rows, give or take noise.
    assert 0.008 <= over / rows <= 0.025, over / rows


@pytest.mark.parametrize(("n", "k"), [(400, 5), (2000, 3), (60, 1)])
def test_pca_t2_limit_is_the_f_distribution_limit(n: int, k: int) -> None:
    from scipy import stats

    from agent.detect.kernels.pca import control_limits

    z = stats.norm.ppf(0.999)
    t2, _ = control_limits(np.ones(k + 1), k + 1, k, n, z)
    exact = k * (n - 1) * (n + 1) / (n * (n - k)) * stats.f.ppf(0.999, k, n - k)
    # Paulson's approximation: worst with one degree of freedom and few rows (2.4 % here).
    assert t2 == pytest.approx(exact, rel=0.03)


def test_pca_without_residual_space_falls_back_to_the_largest_value_seen() -> None:
    from agent.detect.kernels.pca import control_limits

    t2, q = control_limits(np.array([2.0, 1.0]), 2, 2, 400, 3.09)
    assert math.isfinite(t2) and math.isnan(q)


def test_pca_learns_only_on_complete_rows_and_skips_bad_samples() -> None:
    rule = PcaRule(kind="pca", device="m1", tags=["a", "b"], warmup_samples=10)
    det = chain(rule)
    det.on_batch(batch(["a"], [1.0], 0))  # b never seen yet: no row
    det.on_batch(batch(["a", "b"], [1.0, 1e9], 1, quality=[0, Quality.BAD]))
    assert math.isnan(det.scores()["pca-1"])


def test_jacobi_matches_numpy_eigh() -> None:
    rng = np.random.default_rng(4)
    m = rng.normal(size=(8, 8))
    sym = m @ m.T
    vectors, values = np.zeros((8, 8)), np.zeros(8)
    jacobi_eigh(sym.copy(), vectors, values)
    expected = np.linalg.eigvalsh(sym)[::-1]
    np.testing.assert_allclose(values, expected, rtol=1e-9)
    np.testing.assert_allclose(vectors @ np.diag(values) @ vectors.T, sym, atol=1e-9)


def test_an_episode_running_at_shutdown_ends_as_ongoing() -> None:
    det = chain(limits(high=80.0))
    feed(det, "temp", [90.0, 91.0])
    [end] = det.flush(T0 + 5 * S)
    assert end.data["phase"] == "end" and end.data["ongoing"] is True
    assert end.data["duration_s"] == 1.0 and end.data["max_excess"] == 11.0


def test_an_end_waiting_for_its_context_goes_out_at_shutdown() -> None:
    det = chain(limits(high=80.0))  # context_samples=2
    events = feed(det, "temp", [90.0, 70.0])
    assert phases(events) == [(0.0, "start")]
    [end] = det.flush(T0 + 5 * S)
    assert end.data["context_complete"] is False and end.data["tags"]["temp"]["after"] == []


def test_chain_merges_scores_of_every_scoring_member() -> None:
    det = chain(limits(high=80.0), ZScoreRule(kind="zscore", device="m1", tags=["temp"]))
    assert isinstance(det, ScoringDetector)
    det.on_batch(batch(["temp", "other"], [75.0, 1.0], 0))
    scores = det.scores()
    assert scores["limits-1:temp"] == -5.0 and math.isnan(scores["zscore-2:temp"])


def test_tags_of_a_batch_that_no_rule_names_are_ignored() -> None:
    det = chain(limits(high=80.0))
    assert det.on_batch(batch(["x", "y"], [1e9, 1e9], 0)) == []


def _share_over(rule: PcaRule, rows: np.ndarray, learn: int) -> float:
    det = chain(rule)
    tags = rule.tags
    over = 0
    for i, row in enumerate(rows):
        det.on_batch(batch(tags, list(row), i))
        if i >= learn:
            over += det.scores()[rule.name or ""] > 1.0
    return over / (len(rows) - learn)


def test_pca_input_smoothing_keeps_the_confidence_of_its_limits_on_independent_rows() -> None:
    """The EWMA of the rows is rescaled by (2 - lam) / lam: on independent rows drawn like
    the learning rows, the limits still hold about 1 - confidence of the rows each."""
    rng = np.random.default_rng(5)
    mixing = rng.normal(size=(6, 6))
    tags = [f"t{i}" for i in range(6)]
    rule = PcaRule(kind="pca", device="m1", name="g", tags=tags, warmup_samples=2000,
                   smoothing_halflife_samples=0, explained_variance=0.7, confidence=0.99,
                   input_smoothing_halflife_samples=3.1)
    share = _share_over(rule, rng.normal(size=(22_000, 6)) @ mixing, 2000)
    assert 0.005 <= share <= 0.03, share


def test_pca_input_smoothing_catches_a_small_lasting_shift_that_single_rows_hide() -> None:
    """A step of one standard deviation in one tag: single rows stay inside the limits most
    of the time, their EWMA leaves them for good (the reason for the multivariate EWMA)."""
    rng = np.random.default_rng(8)
    tags = [f"t{i}" for i in range(4)]
    rows = rng.normal(size=(3000, 4))
    rows[:, 1] += 0.8 * rows[:, 0]
    rows[2000:, 3] += 1.0
    plain = PcaRule(kind="pca", device="m1", name="g", tags=tags, warmup_samples=1000,
                    smoothing_halflife_samples=0, explained_variance=0.75, confidence=0.999)
    smoothed = plain.model_copy(update={"input_smoothing_halflife_samples": 6.6})
    before_plain = _share_over(plain, rows[:2000], 1000)
    before_smoothed = _share_over(smoothed, rows[:2000], 1000)
    after_plain = _share_over(plain, rows, 1000) * 2 - before_plain
    after_smoothed = _share_over(smoothed, rows, 1000) * 2 - before_smoothed
    assert before_plain < 0.01 and before_smoothed < 0.01, (before_plain, before_smoothed)
    assert after_plain < 0.2, after_plain
    assert after_smoothed > 0.6 and after_smoothed > 3 * after_plain, (after_smoothed,
                                                                      after_plain)


def _pump_rows(rng: np.random.Generator, n: int, flow_offset: float = 0.0) -> np.ndarray:
    """Current, flow and vibration of a pump at a random load: they move together."""
    load = rng.uniform(0.5, 1.0, n)
    return np.stack([10 * load + rng.normal(0, 0.1, n),
                     50 * load + flow_offset + rng.normal(0, 0.5, n),
                     2 * load + rng.normal(0, 0.05, n)], axis=1)


def mset(**kw: Any) -> MsetRule:
    return MsetRule(kind="mset", device="m1", name="pump", tags=["current", "flow", "vib"],
                    warmup_samples=300, **kw)


def test_mset_catches_a_flow_short_of_what_the_load_says_and_clears_when_it_returns() -> None:
    rng = np.random.default_rng(3)
    det = chain(mset())
    tags = ("current", "flow", "vib")
    rows = np.concatenate([_pump_rows(rng, 900), _pump_rows(rng, 60, flow_offset=-3.0),
                           _pump_rows(rng, 100)])
    events: list[tuple[int, Event]] = []
    over = np.zeros(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        events += [(i, e) for e in det.on_batch(batch(tags, list(row), i))]
        over[i] = det.scores()["pump"] >= 1.0
    assert not over[300:900].any(), "normal rows at any load raise nothing"
    first, start = events[0]
    assert 900 <= first < 910, "a shift of a few sigmas is decided within a few rows"
    assert over[910:960].mean() > 0.9, "and stays decided while it lasts"
    assert not over[975:].any(), "the return to normal is decided too"
    assert start.data["phase"] == "start" and start.data["detector"] == "mset"
    assert start.data["threshold"] == 1.0 and set(start.data["tags"]) == set(tags)


def test_mset_is_quiet_on_rows_like_its_learning_rows() -> None:
    """Independent rows drawn like the learning ones: the SPRT (alpha 1e-6 a decision) raises
    next to nothing over 10,000 rows."""
    rng = np.random.default_rng(11)
    mixing = rng.normal(size=(5, 5))
    tags = [f"t{i}" for i in range(5)]
    rule = MsetRule(kind="mset", device="m1", name="g", tags=tags, warmup_samples=1000)
    det = chain(rule)
    rows = rng.normal(size=(11_000, 5)) @ mixing
    over = 0
    for i, row in enumerate(rows):
        det.on_batch(batch(tags, list(row), i))
        over += i >= 1000 and det.scores()["g"] > 1.0
    assert over / 10_000 < 0.005, over


def test_mset_learns_only_on_complete_rows_and_skips_bad_samples() -> None:
    det = chain(MsetRule(kind="mset", device="m1", tags=["a", "b"], warmup_samples=10))
    det.on_batch(batch(["a"], [1.0], 0))
    det.on_batch(batch(["a", "b"], [1.0, 1e9], 1, quality=[0, Quality.BAD]))
    assert math.isnan(det.scores()["mset-1"])


def test_mset_memory_holds_at_least_each_tags_extremes_and_at_most_its_rows() -> None:
    assert memory_size(40, 6, 400) == 40
    assert memory_size(4, 6, 400) == 12
    assert memory_size(40, 6, 25) == 25


def test_cholesky_solve_matches_numpy() -> None:
    rng = np.random.default_rng(4)
    m = rng.normal(size=(9, 9))
    spd = m @ m.T + 0.1 * np.eye(9)
    b = rng.normal(size=(9, 3))
    x = b.copy()
    cholesky_solve(spd.copy(), x)
    np.testing.assert_allclose(x, np.linalg.solve(spd, b), rtol=1e-9, atol=1e-12)


def test_mset_learned_state_carries_over_a_restart() -> None:
    rng = np.random.default_rng(6)
    tags = ["current", "flow", "vib"]
    first = rule_detectors("m1", [("pump", mset())])[0]
    for i, row in enumerate(_pump_rows(rng, 350)):
        first.on_batch(batch(tags, list(row), i))
    assert isinstance(first, ScoringDetector)
    saved = first.learned()
    again = rule_detectors("m1", [("pump", mset())])[0]
    assert again.restore(saved) == 1
    assert again.learned() == saved
    other = rule_detectors("m1", [("pump", mset(memory_vectors=20))])[0]
    assert other.restore(saved) == 0, "another rule's model is not taken"
    later = _pump_rows(rng, 30, flow_offset=-3.0)
    for d in (again, first):
        for i, row in enumerate(later):
            d.on_batch(batch(tags, list(row), 350 + i))
    assert again.scores() == first.scores() and first.scores()["pump"] > 1.0


def test_mset_rows_learned_before_the_fit_carry_over_a_restart() -> None:
    rng = np.random.default_rng(7)
    tags = ["current", "flow", "vib"]
    rows = _pump_rows(rng, 320)
    whole = rule_detectors("m1", [("pump", mset())])[0]
    half = rule_detectors("m1", [("pump", mset())])[0]
    for i, row in enumerate(rows):
        whole.on_batch(batch(tags, list(row), i))
        if i < 150:
            half.on_batch(batch(tags, list(row), i))
    again = rule_detectors("m1", [("pump", mset())])[0]
    assert again.restore(half.learned()) == 1
    for i, row in enumerate(rows[150:]):
        again.on_batch(batch(tags, list(row), 150 + i))
    assert again.scores() == whole.scores()


def test_mset_memory_order_is_numpys_stable_argsort() -> None:
    from agent.detect.kernels.mset import _argsort

    rng = np.random.default_rng(3)
    for values in (rng.normal(size=257), rng.integers(0, 5, size=64).astype(float),
                   np.array([1.0]), np.array([])):
        assert np.array_equal(_argsort(values), np.argsort(values, kind="stable"))
