"""Detection quality of the shipped defaults on the real labelled datasets (`eval.suite`).

Runs the agent's own detector classes through `eval`, each benchmark by its protocol, with
the config models' defaults: no selection, nothing read from the labels at run time. The
floors are issue 18's targets where they are met, else the measured figure with a small
margin, and say so. Skipped only when the datasets folder is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.__main__ import main
from eval.cwru import NORMAL, has_cwru
from eval.datasets import datasets_dir
from eval.suite import multivariate_default, nab, pca_rule, skab, skab_flag_all

DATASETS = datasets_dir()
needs = pytest.mark.skipif(
    not (DATASETS / "nab").is_dir(),
    reason=f"labelled datasets not found at {DATASETS} (set $EDGE_AGENT_DATASETS)",
)
MACHINE = "machine_temperature_system_failure.csv"


@needs
def test_nab_univariate_default_beats_the_published_detectors_pooled() -> None:
    report = nab(DATASETS)
    assert report.scores["standard"] >= 70.0
    assert report.scores["reward_low_fp"] >= 60.0
    assert report.scores["reward_low_fn"] >= 72.0
    machine = report.files[MACHINE]["standard"]
    assert machine.detected == machine.windows == 4
    assert machine.false_positives <= 2
    quiet = [n for n in report.files if n.startswith("art_daily_no_noise")]
    assert quiet and all(report.files[n]["standard"].false_positives == 0 for n in quiet)


@pytest.mark.skipif(not (DATASETS / "skab").is_dir(), reason=f"SKAB not found at {DATASETS}")
def test_skab_multivariate_default_beats_flagging_everything_and_the_pca_rule() -> None:
    """valve1 and valve2 (20 files), learning on each file's first 400 rows: the `mset`
    default measured F1 0.852, FAR 12.8 %, MAR 17.7 %; the floors sit just under."""
    report = skab(DATASETS, multivariate_default, ["valve1", "valve2"])
    total = report.total
    assert total.f1 >= 0.85, total
    assert total.false_alarm_rate <= 0.13, total
    assert total.missed_alarm_rate <= 0.18, total
    assert report.sets["valve2"].f1 >= 0.88, report.sets["valve2"]
    assert total.f1 > skab_flag_all(DATASETS, ["valve1", "valve2"]).f1 + 0.1
    assert total.f1 > skab(DATASETS, pca_rule, ["valve1", "valve2"]).total.f1 + 0.1


@needs
def test_eval_json_scores_any_folder_laid_out_like_the_datasets(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two NAB files (and two CWRU files) copied to a folder of one's own: the document has
    their figures only."""
    nab_dir = tmp_path / "nab"
    nab_dir.mkdir()
    names = [MACHINE, "art_daily_no_noise.csv"]
    windows = json.loads((DATASETS / "nab" / "windows.json").read_text())
    (nab_dir / "windows.json").write_text(json.dumps({n: windows[n] for n in names}))
    for name in names:
        (nab_dir / name).write_bytes((DATASETS / "nab" / name).read_bytes())
    bearings = [NORMAL, "48k_DE_IR007_0.mat"] if has_cwru(DATASETS) else []
    if bearings:
        (tmp_path / "cwru").mkdir()
    for name in bearings:
        (tmp_path / "cwru" / name).write_bytes((DATASETS / "cwru" / name).read_bytes())
    assert main(["--datasets", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == ({"nab", "cwru"} if bearings else {"nab"})
    if bearings:
        assert set(doc["cwru"]) == set(bearings)
        assert doc["cwru"][NORMAL]["alarms"] == 0
        assert doc["cwru"][NORMAL]["first_alarm_s"] is None
        fault = doc["cwru"]["48k_DE_IR007_0.mat"]
        assert fault["alarms"] >= 1 and fault["band"] == "resonance"
        assert 0.0 < fault["first_alarm_s"] < fault["signal_s"]
    assert set(doc["nab"]["files"]) == set(names)
    assert doc["nab"]["files"][MACHINE]["detected"] == 4
    assert doc["nab"]["standard"] == pytest.approx(nab(tmp_path).scores["standard"])
    for key in ("standard", "reward_low_fp", "reward_low_fn"):
        assert 0.0 < doc["nab"][key] <= 100.0


def test_eval_refuses_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    assert main(["--datasets", str(tmp_path / "absent"), "--json"]) == 2
