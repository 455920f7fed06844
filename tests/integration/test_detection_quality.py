"""The detectors meet their quality targets on the real labelled datasets (docs/detection.md).

Runs the agent's own detector classes through `eval` (a few seconds). Skipped only when
the datasets folder is absent (a clone without ../shared/datasets).
"""

from __future__ import annotations

import pytest

from eval.datasets import datasets_dir
from eval.suite import nab, skab

DATASETS = datasets_dir()
pytestmark = pytest.mark.skipif(
    not (DATASETS / "skab").is_dir() or not (DATASETS / "nab").is_dir(),
    reason=f"labelled datasets not found at {DATASETS} (set $EDGE_AGENT_DATASETS)",
)


def test_pca_on_skab_valve1_reaches_f1_080() -> None:
    result = skab(DATASETS)
    assert len(result.per_file) == 16
    assert result.total.f1 >= 0.80, result.total


def test_zscore_finds_all_four_machine_temperature_failures_with_at_most_two_false_alarms() -> None:
    result = nab(DATASETS, ["machine_temperature_system_failure.csv"])
    r = result["machine_temperature_system_failure.csv"]
    assert (r.detected, r.windows) == (4, 4)
    assert r.false_positives <= 2, r
