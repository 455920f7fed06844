"""`edge-agent relearn` with the agent stopped, and the age of what was learned: the device's
detectors are built as the agent builds them (`make_detector`, from a configuration file)
on a real state directory; the command runs as a process, as a technician runs it."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from structlog.testing import LogCapture

from agent.detect import learned_state as learned_state_module
from agent.detect import state_file
from agent.detect.base import Detector
from agent.detect.device import learned_of
from agent.detect.learned_state import utc_ns
from agent.detect.state_file import wait_all_saved
from agent.testing import console_script, device_detector, offline_config
from drivers.samples import SampleBatch

S = 1_000_000_000
T0 = 1_700_000_000 * S
TAGS = ("current_a", "flow_m3h", "vibration_mm_s")
RULES = """
  - {device: pump, kind: pca, name: agree, tags: [current_a, flow_m3h, vibration_mm_s],
     warmup_samples: 300, smoothing_halflife_samples: 0, confidence: 0.999}
  - {device: pump, kind: zscore, name: level, tags: [current_a], warmup_samples: 50}
  - {device: pump, kind: drift, name: slow, tags: [flow_m3h], warmup_samples: 50}
  - {device: pump, kind: stuck, name: frozen, tags: [current_a]}
  - {device: fan, kind: rms, name: shake, tags: [vibration_mm_s], warmup_samples: 50}
"""
LEARNING = ["agree", "level:current_a", "slow:flow_m3h"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    device = """
  - name: {name}
    protocol: modbus-tcp
    host: 127.0.0.1
    tags:
      - {{name: current_a, address: 0, type: float32}}
      - {{name: flow_m3h, address: 2, type: float32}}
      - {{name: vibration_mm_s, address: 4, type: float32}}"""
    return offline_config(tmp_path, f"""
devices:{device.format(name="pump")}{device.format(name="fan")}
detectors:{RULES}""")


@pytest.fixture
def restore_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[LogCapture]:
    """What learned_state logs, captured whatever structlog's configuration (a logger cached
    by an earlier test would escape `capture_logs`)."""
    capture = LogCapture()
    monkeypatch.setattr(learned_state_module, "log",
                        structlog.wrap_logger(None, processors=[capture]))
    yield capture


@pytest.fixture(autouse=True)
def new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each detector made after a `learned_until_stopped` is the agent started again: a new
    process, which has no snapshot of the state file in memory (`state_file._latest`), only
    the file as the command left it."""
    monkeypatch.setattr(state_file, "_latest", {})


def detector(config: Path, device: str = "pump") -> Detector:
    return device_detector(config, device)


def feed(det: Detector, count: int, device: str = "pump") -> dict[str, float]:
    """`count` rows of a machine running normally, one batch each; the scores after the last."""
    rng = np.random.default_rng(1)
    load = rng.uniform(0.5, 1.0, count)
    rows = np.column_stack([10 * load + rng.normal(0, 0.1, count),
                            50 * load + rng.normal(0, 0.5, count),
                            2 * load + rng.normal(0, 0.05, count)])
    for i, row in enumerate(rows):
        det.on_batch(SampleBatch(device, TAGS, np.ascontiguousarray(row),
                                 np.zeros(3, dtype=np.uint8), T0 + i * S, i * S))
    return dict(det.scores())  # type: ignore[attr-defined]


def learned_until_stopped(config: Path, device: str = "pump") -> Path:
    """A run of the agent's detectors that learned everything, then a clean stop; the file."""
    det = detector(config, device)
    feed(det, 350, device)
    det.flush(T0 + 350 * S)
    wait_all_saved()
    state_file._latest.clear()  # the process ends
    return config.parent / "state" / "detectors" / f"{device}.json"


def relearn(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([console_script("edge-agent"), "relearn", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def saved(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def test_relearn_with_the_agent_stopped_forgets_only_the_named_rule(config: Path) -> None:
    path = learned_until_stopped(config)
    path.chmod(0o600)  # as the service writes it (UMask=0077)
    before = saved(path)
    assert any(key.startswith("pca|agree|") for key in before["data"])
    assert set(before["learned_at"]) == set(before["data"])  # every row learned, and when

    done = relearn(config, "pump", "agree")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"pump: forgot agree (pca) in {path}; learning again")
    after = saved(path)
    assert not any(key.startswith("pca|agree|") for key in after["data"])
    assert {k: v for k, v in before["data"].items() if not k.startswith("pca|")} == after["data"]
    assert set(after["learned_at"]) == set(after["data"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    restarted = detector(config)
    scores = feed(restarted, 60)  # fewer than the 300 rows the pca rule learns on
    assert math.isnan(scores["agree"]), "the pca rule learns again"
    assert not math.isnan(scores["level:current_a"]), "the zscore rule kept its baseline"


def test_relearn_all_forgets_every_rule_of_every_device(config: Path) -> None:
    pump, fan = learned_until_stopped(config), learned_until_stopped(config, "fan")
    done = relearn(config, "--all")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (f"pump: forgot agree (pca), level:current_a (zscore), slow:flow_m3h "
                        f"(drift) in {pump}; learning again from the first samples once the "
                        "agent runs")
    assert lines[1].startswith("fan: forgot shake:vibration_mm_s (rms)")
    assert saved(pump)["data"] == {} and saved(fan)["data"] == {}
    scores = feed(detector(config), 10)
    assert all(math.isnan(scores[row]) for row in LEARNING)


def test_nothing_learned_yet_is_said_so(config: Path) -> None:
    done = relearn(config, "pump", "level")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pump: level had learned nothing yet")
    assert not (config.parent / "state" / "detectors").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["pmup"], "no device named 'pmup'; devices with rules that learn: pump, fan"),
    (["pump", "levle"], ("device 'pump' has no rule named 'levle'; its rules that learn: "
                        "agree, level, slow")),
    (["pump", "frozen"], ("rule 'frozen' of device 'pump' is a stuck rule, which learns "
                         "nothing; its rules that learn: agree, level, slow")),
    (["--all", "pump"], "name a DEVICE (and, if not all of its rules, the RULEs), or give --all"),
    ([], "name a DEVICE"),
])
def test_unknown_names_are_refused_with_the_known_ones(
        config: Path, args: list[str], message: str) -> None:
    path = learned_until_stopped(config)
    before = path.read_bytes()
    done = relearn(config, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert path.read_bytes() == before


def test_the_restore_says_when_the_model_was_learned(
        config: Path, restore_log: LogCapture) -> None:
    started = time.time_ns()
    path = learned_until_stopped(config)
    learned_at = saved(path)["learned_at"]
    assert all(started - S <= (utc_ns(t) or 0) <= time.time_ns() for t in learned_at.values())

    keeper = learned_of(detector(config))
    [restored] = [e for e in restore_log.entries if e["event"] == "detector_state_restored"]
    assert restored["rows"] == 3 and restored["learned_at"] == min(learned_at.values())
    assert 0 <= restored["learned_age_s"] < 60
    assert keeper is not None
    progress = keeper.progress()
    assert progress is not None and progress["state"] == "learned"
    assert progress["since"] == min(learned_at.values()) and progress["learned_rows"] == 3


def test_an_old_state_file_without_times_is_restored_with_an_unknown_age(
        config: Path, restore_log: LogCapture) -> None:
    path = learned_until_stopped(config)
    old = saved(path)
    path.write_text(json.dumps({"schema": 1, "data": old["data"]}))  # as the earlier version

    restarted = detector(config)
    [restored] = [e for e in restore_log.entries if e["event"] == "detector_state_restored"]
    assert restored["rows"] == 3
    assert restored["learned_at"] is None and restored["learned_age_s"] is None
    keeper = learned_of(restarted)
    assert keeper is not None
    progress = keeper.progress()
    assert progress is not None and (progress["state"], progress["since"]) == ("learned", None)
    assert not math.isnan(feed(restarted, 1)["agree"]), "the old model is used"

    restarted.flush(T0)
    wait_all_saved()
    state_file._latest.clear()
    assert saved(path)["learned_at"] == {}, "an unknown age is not made up at the next save"
    done = relearn(config, "pump", "level")
    assert done.returncode == 0, done.stderr
    assert not any(key.startswith("zscore|") for key in saved(path)["data"])


def test_progress_counts_each_rules_warm_up_in_its_own_unit(config: Path) -> None:
    keeper = learned_of(detector(config))
    assert keeper is not None
    feed(keeper, 20)
    progress = keeper.progress()
    assert progress is not None and progress["state"] == "learning"
    warmups = {rule: info.get("warmup") for rule, info in progress["rules"].items()}
    assert warmups == {"agree": {"seen": 20, "needed": 300, "unit": "rows"},
                       "level": {"seen": 20, "needed": 50, "unit": "samples"},
                       "slow": {"seen": 20, "needed": 50, "unit": "samples"}}
