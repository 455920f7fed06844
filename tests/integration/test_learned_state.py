"""What the detectors learned survives a restart: the device's detector is built as the agent
builds it (`agent.detect.device.make_detector`, from a configuration file), with a real state file
in a temporary state directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import structlog

from agent.detect.base import Detector
from agent.detect.learned_state import KeepLearned
from agent.detect.state_file import wait_all_saved
from agent.testing import device_detector, offline_config
from drivers.samples import SampleBatch

S = 1_000_000_000
T0 = 1_700_000_000 * S
TAGS = ("current_a", "flow_m3h", "vibration_mm_s")
RULES = """
  - {device: pump, kind: pca, name: agree, tags: [current_a, flow_m3h, vibration_mm_s],
     warmup_samples: 300, smoothing_halflife_samples: 0, confidence: 0.999%s}
  - {device: pump, kind: zscore, name: level, tags: [current_a], warmup_samples: 50}
  - {device: pump, kind: drift, name: slow, tags: [flow_m3h], warmup_samples: 50}
  - {device: pump, kind: rms, name: shake, tags: [vibration_mm_s], warmup_samples: 50}
  - {device: pump, kind: stuck, name: frozen, tags: [current_a]}
"""


def config(tmp_path: Path, extra: str = "") -> Path:
    return offline_config(tmp_path, f"""
devices:
  - name: pump
    protocol: modbus-tcp
    host: 127.0.0.1
    tags:
      - {{name: current_a, address: 0, type: float32}}
      - {{name: flow_m3h, address: 2, type: float32}}
      - {{name: vibration_mm_s, address: 4, type: float32}}
detectors:{RULES % extra}""")


detector = device_detector


def rows(count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    load = rng.uniform(0.5, 1.0, count)
    return np.column_stack([10 * load + rng.normal(0, 0.1, count),
                            50 * load + rng.normal(0, 0.5, count),
                            2 * load + rng.normal(0, 0.05, count)])


def feed(det: Detector, values: np.ndarray, start: int) -> list[dict[str, float]]:
    """One batch per row; the scores after each."""
    out = []
    for i, row in enumerate(values, start):
        det.on_batch(SampleBatch("pump", TAGS, np.ascontiguousarray(row),
                                 np.zeros(3, dtype=np.uint8), T0 + i * S, i * S))
        out.append(dict(det.scores()))  # type: ignore[attr-defined]
    return out


def same(a: list[dict[str, float]], b: list[dict[str, float]], keys: list[str]) -> bool:
    return all((math.isnan(x[k]) and math.isnan(y[k])) or x[k] == y[k]
               for x, y in zip(a, b, strict=True) for k in keys)


LEARNED = ["agree", "level:current_a", "slow:flow_m3h", "shake:vibration_mm_s"]


def test_a_restarted_agent_scores_on_with_what_it_learned_not_learning_again(
        tmp_path: Path) -> None:
    data = rows(500)
    path = config(tmp_path)
    first = detector(path)
    feed(first, data[:400], 0)
    first.flush(T0 + 400 * S)  # a clean stop: saved
    wait_all_saved()
    went_on = feed(first, data[400:], 400)

    restarted = detector(path)
    after_restart = feed(restarted, data[400:], 400)
    assert not math.isnan(after_restart[0]["agree"])  # the model, not a warm-up
    assert same(went_on, after_restart, LEARNED)


def test_a_power_cut_after_the_fit_keeps_the_model_saved_when_it_was_fitted(
        tmp_path: Path) -> None:
    data = rows(400)
    path = config(tmp_path)
    first = detector(path)
    feed(first, data[:350], 0)  # fitted at row 300; never flushed: the process is killed
    wait_all_saved()
    saved = json.loads((tmp_path / "state" / "detectors" / "pump.json").read_text())
    assert any(key.startswith("pca|agree|") and entry["model"]
               for key, entry in saved["data"].items())

    restarted = detector(path)
    assert not math.isnan(feed(restarted, data[350:351], 350)[0]["agree"])


def test_the_slow_baselines_are_saved_every_interval_on_the_clock(tmp_path: Path) -> None:
    path = config(tmp_path)
    det = detector(path)
    feed(det, rows(60), 0)  # the univariate rows are warm, the pca one still learning
    state_file = tmp_path / "state" / "detectors" / "pump.json"
    det.on_tick(100 * S, T0 + 100 * S)
    wait_all_saved()
    assert not state_file.exists()
    det.on_tick(100 * S + 601 * S, T0 + 701 * S)
    wait_all_saved()
    saved = json.loads(state_file.read_text())["data"]
    level = next(v for k, v in saved.items() if k.startswith("zscore|level:current_a|"))
    assert level[0] == 60  # the samples it learned on
    # The pca rule before its fit keeps the rows it learned on; stuck keeps nothing (its
    # state is times of the monotonic clock, which restarts with the machine).
    agree = next(v for k, v in saved.items() if k.startswith("pca|agree|"))
    assert len(agree["rows"]) == 60 * 3 and agree["model"] == []
    assert not any(k.startswith("stuck|") for k in saved)


def test_a_changed_rule_learns_again_and_the_unchanged_ones_keep_theirs(
        tmp_path: Path) -> None:
    data = rows(420)
    first = detector(config(tmp_path))
    feed(first, data[:400], 0)
    first.flush(T0 + 400 * S)
    wait_all_saved()
    with structlog.testing.capture_logs() as logs:
        restarted = detector(config(tmp_path, ", explained_variance: 0.8"))
    scores = feed(restarted, data[400:], 400)
    assert math.isnan(scores[0]["agree"])  # another model asked for: learning from row 0
    assert not math.isnan(scores[0]["level:current_a"])
    (restored,) = [e for e in logs if e["event"] == "detector_state_restored"]
    assert restored["learning_again"] == ["agree (pca)"], "the log says which, for a person"


@pytest.mark.parametrize("content", ["{not json", json.dumps({"schema": 1, "data": {
    "pca|agree|0123456789abcdef": {"state": [1.0], "model": [], "ewma": [], "rows": []}}})])
def test_a_damaged_or_foreign_state_file_starts_afresh(tmp_path: Path, content: str) -> None:
    path = config(tmp_path)
    state_file = tmp_path / "state" / "detectors" / "pump.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text(content)
    det = detector(path)
    scores = feed(det, rows(60), 0)
    assert math.isnan(scores[-1]["agree"]) and not math.isnan(scores[-1]["level:current_a"])


def test_detectors_of_a_device_without_rules_keep_no_file(tmp_path: Path) -> None:
    path = config(tmp_path)
    text = path.read_text()
    path.write_text(text[:text.index("detectors:")])
    det = detector(path)
    det.flush(T0)
    wait_all_saved()
    assert not (tmp_path / "state" / "detectors").exists()
    assert not isinstance(det, KeepLearned)
