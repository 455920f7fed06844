"""The `band_rms` bearing default on the CWRU bearings (`eval.cwru`), by the dataset's protocol.

Learned on the first half of the healthy run: the second half raises nothing, every fault
file is flagged within its first blocks. Skipped when the dataset folder is absent.
"""

from __future__ import annotations

import pytest

from eval.cwru import FAULTS, NORMAL, cwru, has_cwru
from eval.datasets import datasets_dir
from eval.suite import CWRU_DE_BEARING, bearing_lines

DATASETS = datasets_dir()
needs = pytest.mark.skipif(
    not has_cwru(DATASETS),
    reason=f"CWRU bearing files not found at {DATASETS / 'cwru'} (set $EDGE_AGENT_DATASETS)",
)


def test_the_bearing_lines_follow_from_its_geometry() -> None:
    """The formulas give the dataset's figures for the 6205-2RS at 1,797 rpm (in inches too)."""
    given = {"ftf": 11.9, "shaft": 29.95, "bsf": 70.6, "bpfo": 107.4, "bsf2": 141.2,
             "bpfi": 162.2}
    assert list(CWRU_DE_BEARING) == list(given)  # lowest first: the bands' order
    for lines in (CWRU_DE_BEARING, bearing_lines(1797 / 60, 9, 0.3126, 1.537)):
        assert lines == pytest.approx(given, abs=0.05)


@needs
def test_bearing_default_is_quiet_on_the_healthy_half_and_flags_every_fault() -> None:
    result = cwru(DATASETS)
    assert set(result) == {NORMAL, *FAULTS}
    healthy = result[NORMAL]
    assert healthy["alarms"] == 0 and healthy["first_alarm_s"] is None
    assert healthy["band"] is None
    # Measured 1.72 (bpfo): the healthy half stays well under the 3x limits.
    assert healthy["peak_ratio"] < 2.5
    for name in FAULTS:
        fault = result[name]
        assert fault["alarms"] >= 1, name
        # Measured 0.34 s for each, the first block of 16,384 samples: a floor at two blocks.
        assert fault["first_alarm_s"] is not None and fault["first_alarm_s"] <= 0.52, name
        assert fault["band"] == "resonance", name
        assert fault["peak_ratio"] > 5.0, name  # measured 6.9 (B007) to 28 (IR021)
