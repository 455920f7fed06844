"""A power cut does not make the agent learn again, and the windows it lost are named:
plc-sim, Mosquitto and `edge-agent run` as processes; the agent is SIGKILLed (its /dev/shm
files removed, for the windows), then started again on the same state directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import AgentProcess, Sim, agent_config, modbus_device, saved_row

from agent.detect.open_windows import FILE_NAME
from agent.detect.state_file import read_document
from agent.detect.window_keep import keep_path
from agent.events import WINDOW, WINDOWS_LOST
from agent.store.spool import default_path as spool_path
from agent.testing import Mosquitto, MqttCollector, wait_until

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


def listed_windows(state_dir: Path) -> dict[str, int]:
    """What `open-windows.slots` lists: device -> its open window's start_ns ({} if none)."""
    try:
        windows = read_document(state_dir / FILE_NAME)[1]["data"]["windows"]
    except (FileNotFoundError, ValueError):
        return {}
    return {device: start_ns for device, start_ns, _ in windows}


def test_a_power_cut_names_the_windows_it_lost_and_a_clean_stop_none(
    tmp_path: Path, mosquitto: Mosquitto, sims: list[Sim], numba_cache: Path
) -> None:
    """Three runs on one state directory: a SIGTERM; a start that reports nothing lost, then a
    SIGKILL with /dev/shm emptied as a power cut empties it; a start that names exactly the
    windows open at the cut (4 s windows, written at most 1 s after they opened)."""
    devices = {"compressor-1": sims[0].port, "compressor-2": sims[1].port}
    config = agent_config(tmp_path, mosquitto, "".join(
        modbus_device(name, port, 0.1) for name, port in devices.items()), window_s=4.0)
    state_dir = tmp_path / "state"
    with MqttCollector(mosquitto.host, mosquitto.port) as collector:
        with AgentProcess(config, tmp_path / "first.log", numba_cache) as first:
            wait_until(lambda: listed_windows(state_dir).keys() == devices.keys(),
                       timeout_s=30, what="both devices' windows listed")
            assert first.terminate() == 0
        assert listed_windows(state_dir) == {}, "a clean stop flushed and unlisted them"

        with AgentProcess(config, tmp_path / "second.log", numba_cache) as second:
            second.wait_logged("kernels_ready")  # after the report of lost windows
            assert second.logged("windows_not_closed") == []
            first_listed = listed_windows(state_dir)
            lost = wait_until(lambda: (now := listed_windows(state_dir)).keys() ==
                              devices.keys() and now != first_listed and now,
                              timeout_s=30, what="both devices' next windows listed")
            second.kill()
        # What a power cut does to /dev/shm: the windows kept in RAM and the spool are gone.
        for path in (*(keep_path(state_dir, name) for name in devices),
                     spool_path(state_dir / "events.sqlite")):
            if path is not None:
                path.unlink(missing_ok=True)

        with AgentProcess(config, tmp_path / "third.log", numba_cache) as third:
            logged = third.wait_logged("windows_not_closed")
            assert {w["dev"]: w["start_ns"] for w in logged["windows"]} == lost
            got = collector.wait_for(lambda ms: any(m.kind == WINDOWS_LOST for _, m in ms),
                                     timeout_s=30, what="the windows_lost event")
            [report] = [m for _, m in got if m.kind == WINDOWS_LOST]
            assert report.device == "_gateway"
            assert {w["dev"]: w["start_ns"] for w in report.data["windows"]} == lost
            assert report.data["lost_total"] == 2 and \
                report.data["saved_ns"] < report.data["until_ns"]
            assert third.terminate() == 0
    closed = {(m.device, m.data["start_ns"]) for _, m in collector.snapshot()
              if m.kind == WINDOW}
    assert not closed & set(lost.items()), "the windows named were never sent: they were lost"
    assert {d for d, _ in closed} == devices.keys()
