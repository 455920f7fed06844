"""`edge-agent relearn` against the running agent (plc-sim, Mosquitto and `edge-agent run` as
processes): the named rule forgets its model at once, on disk too, and fits a new one from
the next samples, while the other rule keeps its baseline and the agent runs on; `status`
says which rule is learning since when; the restart after says how old the models are;
with the agent stopped the command rewrites the file itself."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import AgentProcess, Sim, agent_config, modbus_device, saved_row

from agent.detect.kernels.pca import XS_FITTED, XS_N
from agent.detect.learned_state import utc_ns
from agent.testing import Mosquitto, console_script, wait_until

pytestmark = pytest.mark.e2e

S = 1_000_000_000
WARMUP = 100
"""Rows the pca rule learns on: 5 s at the 0.05 s poll, time enough to see it learn."""
RULES = f"""
detectors:
  - {{device: compressor-1, kind: pca, name: load, tags: [motor_current_a, active_power_w,
     discharge_pressure_bar], warmup_samples: {WARMUP}, confidence: 0.999,
     smoothing_halflife_samples: 0}}
  - {{device: compressor-1, kind: zscore, name: current, tags: [motor_current_a],
     warmup_samples: 20}}
"""


def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([console_script("edge-agent"), *args], capture_output=True,
                          text=True, timeout=60, check=False)


def fitted_model(state_file: Path) -> list[float] | None:
    load = saved_row(state_file, "pca|load|")
    return load["model"] if load and load["model"] else None


def rules_of(config: Path) -> dict[str, Any] | None:
    """What `status --json` says of compressor-1's rules (None before it says anything)."""
    shown = edge_agent("status", "-c", str(config), "--json")
    if shown.returncode != 0:
        return None
    progress = json.loads(shown.stdout).get("detectors", {}).get("compressor-1")
    return progress["rules"] if progress else None


def test_relearn_while_the_agent_runs_and_after_it_stopped(
    tmp_path: Path, mosquitto: Mosquitto, sims: list[Sim], numba_cache: Path
) -> None:
    config = agent_config(tmp_path, mosquitto, modbus_device("compressor-1", sims[0].port, 0.05))
    config.write_text(config.read_text() + RULES)
    state_file = tmp_path / "state" / "detectors" / "compressor-1.json"
    with AgentProcess(config, tmp_path / "first.log", numba_cache) as agent:
        agent.wait_logged("kernels_ready")
        first = wait_until(lambda: fitted_model(state_file), timeout_s=60,
                           what="the first pca model saved")
        learned = wait_until(lambda: (r := rules_of(config)) and all(
            rule["state"] == "learned" for rule in r.values()) and r, timeout_s=30,
            what="status: both rules learned")
        assert learned is not None
        current_since = learned["current"]["since"]
        shown = edge_agent("status", "-c", str(config))
        assert "compressor-1" in shown.stdout and "rules learned since" in shown.stdout

        asked = time.time_ns()
        done = edge_agent("relearn", "-c", str(config), "compressor-1", "load")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "compressor-1: forgot load (pca); learning again from the next samples\n"
        # Answered once saved: the model is gone from the file, the other rule's baseline kept.
        load = saved_row(state_file, "pca|load|")
        assert load["model"] == [] and load["state"][XS_FITTED] == 0.0
        assert load["state"][XS_N] < WARMUP
        assert saved_row(state_file, "zscore|current:motor_current_a|")[0] >= 20
        forgotten = agent.wait_logged("detector_state_forgotten")
        assert (forgotten["device"], forgotten["rules"], forgotten["rows"]) == (
            "compressor-1", ["load"], 1)

        rules = rules_of(config)
        assert rules is not None
        # Learning again since the command (or, on a slow machine, learned again since).
        assert (utc_ns(rules["load"]["since"]) or 0) >= asked - S
        assert rules["current"] == {"state": "learned", "since": current_since}

        second = wait_until(lambda: fitted_model(state_file), timeout_s=60,
                            what="a new pca model fitted and saved")
        assert second != first, "fitted on the samples after the command"

        refused = edge_agent("relearn", "-c", str(config), "compressor-1", "loda")
        assert refused.returncode == 2
        assert ("device 'compressor-1' has no rule named 'loda'; its rules that learn: "
                "load, current") in refused.stderr
        assert agent.terminate() == 0
    assert not (tmp_path / "state" / "control.sock").exists()

    # Stopped: the command rewrites the file itself.
    done = edge_agent("relearn", "-c", str(config), "compressor-1", "current")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"compressor-1: forgot current:motor_current_a (zscore) in "
                                  f"{state_file}; learning again from the first samples once")
    assert saved_row(state_file, "zscore|") is None and fitted_model(state_file) == second

    with AgentProcess(config, tmp_path / "second.log", numba_cache) as agent:
        restored = agent.wait_logged("detector_state_restored")
        assert restored["rows"] == 1  # the model; the z-score learns again
        assert utc_ns(restored["learned_at"]) is not None and restored["learned_age_s"] >= 0
        assert (utc_ns(restored["learned_at"]) or 0) >= asked - S  # the second model's age
        assert agent.terminate() == 0
