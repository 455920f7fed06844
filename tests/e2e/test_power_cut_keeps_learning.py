"""A power cut does not make the agent learn again: plc-sim, Mosquitto and `edge-agent run`
as processes; the agent is SIGKILLed once its `pca` model is fitted, then started again on
the same state directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import AgentProcess, Sim, agent_config, modbus_device, saved_row

from agent.testing import Mosquitto, wait_until

pytestmark = pytest.mark.e2e

RULES = """
detectors:
  - {device: compressor-1, kind: pca, name: load, tags: [motor_current_a, active_power_w,
     discharge_pressure_bar], warmup_samples: 40, confidence: 0.999,
     smoothing_halflife_samples: 0}
  - {device: compressor-1, kind: zscore, name: current, tags: [motor_current_a],
     warmup_samples: 20}
"""


def fitted_model(state_file: Path) -> dict[str, Any] | None:
    """The `pca` rule's saved entry once it holds a model (None before)."""
    load: dict[str, Any] | None = saved_row(state_file, "pca|load|")
    return load if load and load["model"] else None


def test_a_power_cut_after_learning_restarts_with_the_same_model(
    tmp_path: Path, mosquitto: Mosquitto, sims: list[Sim], numba_cache: Path
) -> None:
    config = agent_config(tmp_path, mosquitto, modbus_device("compressor-1", sims[0].port, 0.05))
    config.write_text(config.read_text() + RULES)
    state_file = tmp_path / "state" / "detectors" / "compressor-1.json"
    with AgentProcess(config, tmp_path / "first.log", numba_cache) as first:
        first.wait_logged("kernels_ready")
        model = wait_until(lambda: fitted_model(state_file), timeout_s=30,
                           what="the pca model saved")
        first.kill()  # a power cut: no shutdown, no last save
    assert model is not None

    with AgentProcess(config, tmp_path / "second.log", numba_cache) as second:
        restored = second.wait_logged("detector_state_restored")
        assert restored["rows"] == 2 and restored["device"] == "compressor-1"
        second.wait_logged("device_up")
        assert second.terminate() == 0
    after = fitted_model(state_file)
    # The model it ran with is the one saved before the kill: learned once, not again on
    # the samples of the second run (which differ).
    assert after is not None and after["model"] == model["model"]
    assert after["state"][:5] == model["state"][:5]  # rows learned, fitted, k, limits
