"""Detection quality on the real labelled datasets, with configurations chosen WITHOUT their
labels (`eval.select`, docs/detection.md "How the configurations were chosen").

Runs the agent's own detector classes through `eval` (about 40 s: the selection, then the
scoring). Skipped only when the datasets folder is absent (a clone without ../shared/datasets).

Issue 5's targets are NOT met under this protocol (SKAB valve1 F1 >= 0.80; NAB
machine_temperature 4 of 4 windows with at most 2 false positives): the tests below assert
the honest current numbers, with a small margin, as a regression floor, and say so.
"""

from __future__ import annotations

import pytest

from eval.datasets import datasets_dir, nab_files
from eval.select import (
    StepDesign,
    nab_rule,
    skab_rule,
    skab_rule_leading,
    skab_rule_limits,
    skab_rule_mewma,
    skab_rule_mewma_calibrated,
    skab_rule_steady,
    step_design,
)
from eval.suite import nab, skab

DATASETS = datasets_dir()
pytestmark = pytest.mark.skipif(
    not (DATASETS / "skab").is_dir() or not (DATASETS / "nab").is_dir(),
    reason=f"labelled datasets not found at {DATASETS} (set $EDGE_AGENT_DATASETS)",
)
MACHINE = "machine_temperature_system_failure.csv"


def test_skab_selection_uses_only_the_anomaly_free_run_and_keeps_its_false_alarm_promise() -> None:
    choice = skab_rule(DATASETS)
    assert choice.rule.tags == ["Current", "Pressure", "Voltage"]
    assert choice.rule.smoothing_halflife_samples == 0.0
    result = skab(DATASETS, choice.rule)
    assert len(result.per_file) == 16
    # The rule promised <= 1 % false alarms on normal operation: it holds on valve1 too.
    assert result.total.false_alarm_rate <= 0.01, result.total
    # TARGET NOT MET (F1 >= 0.80): the three tags that stay stable on the anomaly-free run
    # barely see the valve closure. Regression floor at the current 0.004.
    assert result.total.f1 >= 0.003, result.total


def test_skab_selection_on_the_valve1_leading_parts_scores_the_current_floor() -> None:
    choice = skab_rule_leading(DATASETS)
    assert len(choice.rule.tags) == 8 and choice.rule.smoothing_halflife_samples == 0.0
    result = skab(DATASETS, choice.rule)
    # TARGET NOT MET (F1 >= 0.80): regression floor at the current 0.537 (FAR 0.094).
    assert result.total.f1 >= 0.52, result.total
    assert result.total.false_alarm_rate <= 0.11, result.total


def test_skab_trend_rule_leaves_out_exactly_the_heating_temperatures() -> None:
    choice = skab_rule_steady(DATASETS)
    assert set(choice.dropped) == {"Temperature", "Thermocouple"}
    result = skab(DATASETS, choice.rule)
    # TARGET NOT MET (F1 >= 0.80): regression floor at the current 0.557 (FAR 0.001).
    assert result.total.f1 >= 0.54, result.total
    assert result.total.false_alarm_rate <= 0.01, result.total


def test_skab_control_limits_at_the_reference_confidence_score_the_current_floor() -> None:
    choice = skab_rule_limits(DATASETS)
    assert choice.rule.confidence == 0.999 and choice.rule.smoothing_halflife_samples == 0
    result = skab(DATASETS, choice.rule)
    # TARGET NOT MET (F1 >= 0.80): regression floor at the current 0.701 (FAR 0.012): the
    # best admissible line, files 0, 2, 4 and 6 are not seen. The limits promise 0.1 % of
    # normal rows over each of T² and Q; the scored normal rows are near that promise.
    assert result.total.f1 >= 0.69, result.total
    assert result.total.false_alarm_rate <= 0.02, result.total


@pytest.fixture(scope="module")
def design() -> StepDesign:
    """E's and F's design traces, made once for both."""
    return step_design(DATASETS)


def test_skab_input_smoothing_designed_on_synthetic_steps_scores_the_current_floor(
        design: StepDesign) -> None:
    choice = skab_rule_mewma(DATASETS, design)
    # The 1-sd design steps favour the strongest smoothing: it flags 86 % of the stepped
    # rows and 56 % of the untouched ones; the smaller the weight, the more of both.
    assert choice.rule.input_smoothing_halflife_samples == pytest.approx(13.51, abs=0.01)
    hits = [choice.f1[w][1] for w in sorted(choice.f1)]
    assert hits == sorted(hits, reverse=True), choice.f1
    result = skab(DATASETS, choice.rule)
    # TARGET NOT MET (F1 >= 0.80): regression floor at the current 0.748, bought with a
    # false-alarm rate of 0.70 (flagging every row scores 0.698): no use on a machine.
    assert result.total.f1 >= 0.74, result.total
    assert result.total.missed_alarm_rate <= 0.06, result.total


def test_skab_input_smoothing_designed_at_one_calibrated_false_alarm_rate_scores_its_floor(
        design: StepDesign) -> None:
    choice = skab_rule_mewma_calibrated(DATASETS, design)
    # The leading rows are out of control against a model of the rows before them: 1 % of
    # them is over the 99.9 % limits even unsmoothed, and further over them the slower the
    # smoothing; at those factors a 1-sd step is flagged barely more than untouched rows.
    factors = [choice.design[w][0] for w in sorted(choice.design)]
    assert factors == sorted(factors, reverse=True) and factors[-1] > 1.0, choice.design
    assert all(hit < 0.02 for _, hit in choice.design.values()), choice.design
    assert choice.rule.input_smoothing_halflife_samples == pytest.approx(3.106, abs=0.01)
    result = skab(DATASETS, choice.rule)
    # TARGET NOT MET (F1 >= 0.80): regression floor at the current 0.638 (FAR 0.001), below
    # D: the factor calibrated on the leading rows (10.5) hides closures D sees.
    assert result.total.f1 >= 0.62, result.total
    assert result.total.false_alarm_rate <= 0.01, result.total


def test_nab_selection_from_probationary_periods_scores_the_current_floor() -> None:
    """The floor as measured on the 7 realKnownCause files, the whole NAB folder until the
    development half grew to 34 files; on all 34 the selection falls back to its top
    threshold (no threshold keeps alarms out of the probationary periods)."""
    known_cause = nab_files(DATASETS, "realKnownCause")
    assert len(known_cause) == 7
    choice = nab_rule(DATASETS, known_cause)
    assert choice.rule.threshold_z == 5.25
    results = nab(DATASETS, choice.rule, known_cause)
    mean = sum(r.normalized for r in results.values()) / len(results)
    assert mean >= 17.0, results
    machine = results[MACHINE]
    assert machine.false_positives <= 2, machine
    # TARGET NOT MET (all 4 machine_temperature windows): the threshold the probationary
    # periods allow (5.25) detects none of them today (0 of 4).
    assert machine.windows == 4
