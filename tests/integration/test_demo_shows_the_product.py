"""`make demo` shows what the product sells: states, energy per state, an anomaly and a limit.

The demo's own configuration (config/demo.yaml) replayed over the simulator's compressor
with its cooler fouling after `FAULT_ONSET_S`, as tools/demo.py runs it: within the first
three minutes every kind a newcomer should see is there, in readable lines, and a healthy
compressor raises no alarm in half an hour.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from agent.cli.main import main
from plc_sim.compressor import Compressor
from plc_sim.faults import Fault

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "demo.yaml"
POLL_S = 0.5


def demo_module() -> object:
    spec = importlib.util.spec_from_file_location("demo", ROOT / "tools" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recorded(path: Path, machine: Compressor, seconds: float) -> Path:
    """What the demo device reads, one row per poll, as `edge-agent replay` takes it."""
    rows = [("motor_current_a,active_power_w,energy_wh,discharge_pressure_bar,"
             "discharge_temp_c,load_cycles")]
    for _ in range(int(seconds / POLL_S)):
        s = machine.advance(POLL_S)
        rows.append(f"{s.motor_current_a:.4f},{s.active_power_w:.2f},{int(s.energy_wh)},"
                    f"{s.pressure_reading_bar:.2f},{s.temperature_c:.1f},{s.load_cycles}")
    path.write_text("\n".join(rows) + "\n")
    return path


def replayed(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> list[str]:
    monkeypatch.setenv("DEMO_STATE_DIR", str(tmp_path / "state"))
    assert main(["replay", "-c", str(CONFIG), "--csv", str(data)]) == 0
    return capsys.readouterr().out.splitlines()


def test_the_demo_shows_states_energy_an_anomaly_and_a_limit_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    onset_s = demo_module().FAULT_ONSET_S  # type: ignore[attr-defined]
    machine = Compressor(seed=1, fault=Fault("overheating", onset_s=onset_s))
    lines = replayed(tmp_path, recorded(tmp_path / "demo.csv", machine, 180.0),
                     monkeypatch, capsys)
    kinds = {line.split()[4] for line in lines}
    assert {"state", "window", "energy", "anomaly", "limit"} <= kinds, kinds
    energy = next(line for line in lines if " energy " in line)
    assert "running" in energy and "kWh" in energy and "idle" in energy, energy
    assert all(len(line) < 320 for line in lines), max(lines, key=len)
    assert not any("{" in line for line in lines), "a Python dict in a line"


def test_a_healthy_compressor_raises_no_alarm_in_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    lines = replayed(tmp_path, recorded(tmp_path / "healthy.csv", Compressor(seed=2), 1800.0),
                     monkeypatch, capsys)
    assert not [line for line in lines if " anomaly " in line or " limit " in line]
    assert any(" state " in line for line in lines)
