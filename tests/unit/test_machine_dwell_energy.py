"""Energy, hours and starts per state are exact across dwells: `edge-agent replay` of known
piecewise power, from a meter counter and from the power, against the integral of that power
over the states' spans. tests/integration/test_kernel_forms.py runs this in every form."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from agent.cli.replay import read_rows, replay, run_replay
from agent.config.loader import load_config
from agent.config.machines import MachineConfig
from agent.detect import state_file
from agent.detect.device import make_detector
from agent.detect.kernels.state import IDLE
from agent.detect.machine import MachineDetector, MachineSetup
from agent.detect.state_file import StateFile, wait_all_saved
from agent.events import ENERGY, STATE, Event
from drivers.samples import SampleBatch

S = 1_000_000_000
T0 = 1_772_438_400 * S  # 2026-03-02T08:00:00Z
STATES = ("off", "idle", "running", "overload")

CONFIG = """
gateway: {{id: gw-dwell, state_dir: {state}}}
mqtt: {{host: 127.0.0.1, tls: {{enabled: false}}}}
devices:
  - name: press-1
    protocol: modbus-tcp
    host: 127.0.0.1
    poll_interval_s: 1.0
    tags:
      - {{name: power_w, address: 0, type: float32, unit: W}}
      - {{name: energy_wh, address: 2, type: float32, counter: true}}
machines:
  - name: press
    device: press-1
    power_tag: power_w
{meter}    idle_above_w: 100
    running_above_w: 5000
    hysteresis_w: 50
    min_dwell_s: {dwell}
    report_interval_s: {report}
"""
METER = "    energy_counter_tag: energy_wh\n    energy_counter_unit: Wh\n"

# (from second, W): idle; running (a long dwell); a 3 s dip to idle that falls back; a 2 s
# dip to off that turns into an idle dwell (the off one falls back); off; running again (a
# start); at the end an idle dwell that never completes.
STEPS = [(0, 2000.0), (20, 8000.0), (50, 2000.0), (53, 8000.0), (70, 0.0), (72, 2000.0),
         (80, 0.0), (100, 8000.0), (120, 2000.0)]
END_S = 122
SPANS = [("idle", 0, 20), ("running", 20, 72), ("idle", 72, 80), ("off", 80, 100),
         ("running", 100, END_S)]
"""The states in force, from the `state` events (checked): where each state's energy belongs."""


def power_at_samples() -> np.ndarray:
    t = np.arange(END_S + 1)
    return np.array([[w for start, w in STEPS if start <= s][-1] for s in t], dtype=np.float64)


def joules_per_second(meter: bool) -> np.ndarray:
    """The true energy of each second to a sample: with a meter, the power steps 0.3 s before
    the sample that shows it; else it is linear between samples (the trapezoid's exact case)."""
    p = power_at_samples()
    after_step = 0.3 if meter else 0.5
    return np.concatenate([[0.0], (1 - after_step) * p[:-1] + after_step * p[1:]])


def expected(meter: bool) -> tuple[dict[str, float], dict[str, float]]:
    joules = joules_per_second(meter)
    kwh = dict.fromkeys(STATES, 0.0)
    seconds = dict.fromkeys(STATES, 0.0)
    for state, start, end in SPANS:
        kwh[state] += float(joules[start + 1:end + 1].sum()) / 3.6e6
        seconds[state] += end - start
    return kwh, seconds


def csv_lines(meter: bool) -> list[str]:
    """One row a second: the power and the meter's register (Wh) at that second."""
    meter_wh = np.cumsum(joules_per_second(meter)) / 3600
    return [f"2026-03-02T08:{s // 60:02d}:{s % 60:02d}Z,{w},{meter_wh[s]:.9f}"
            for s, w in enumerate(power_at_samples())]


def write(tmp_path: Path, lines: list[str], *, meter: bool, dwell: float = 5,
          report: float = 900) -> tuple[Path, Path]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(state=tmp_path / "state", meter=METER if meter else "",
                                    dwell=dwell, report=report))
    data = tmp_path / "data.csv"
    data.write_text("\n".join(["time,power_w,energy_wh", *lines]) + "\n")
    return config, data


def replayed(config_path: Path, data: Path) -> list[Event]:
    """Every event `edge-agent replay` prints, as events (the detectors the agent builds)."""
    config = load_config(config_path).config
    [device] = config.devices
    events: list[Event] = []
    with open(data, newline="", encoding="utf-8") as source:
        replay(make_detector(config, device), device.name,
               read_rows(source, str(data), device, "time", {}), events.append)
    wait_all_saved()
    return events


def reports(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind == ENERGY and e.data["period"] == "interval"]


@pytest.mark.parametrize("meter", [True, False], ids=["meter", "power"])
def test_energy_and_hours_per_state_are_exact_across_dwells(tmp_path: Path, meter: bool) -> None:
    config, data = write(tmp_path, csv_lines(meter), meter=meter, report=34)
    events = replayed(config, data)
    changes = [(e.data["from"], e.data["to"], e.data["at_ns"]) for e in events if e.kind == STATE]
    t0 = changes[0][2]
    assert [(a, b, (at - t0) // S) for a, b, at in changes] == [
        (None, "idle", 0), ("idle", "running", 20), ("running", "idle", 72),
        ("idle", "off", 80), ("off", "running", 100)]
    kwh, seconds = expected(meter)
    assert kwh["idle"] > 0.01 and kwh["running"] > 0.1  # not a vacuous test
    periods = reports(events)
    assert [p.data["complete"] for p in periods] == [True, True, True, False]
    last = periods[-1].data
    assert last["energy_source"] == ("meter" if meter else "power")
    for state in STATES:
        total = sum(p.data["kwh"][state] for p in periods)
        assert total == pytest.approx(kwh[state], rel=5e-3, abs=1e-12), state
        assert last["totals"]["kwh"][state] == pytest.approx(kwh[state], rel=5e-3, abs=1e-12)
        hours = sum(p.data["hours"][state] for p in periods)
        assert hours * 3600 == pytest.approx(seconds[state], abs=1e-6), state
    assert sum(p.data["starts"] for p in periods) == 1
    # The report at 102 s (samples to 101 s folded in) comes in the dwell that makes the
    # machine run from 100 s: that dwell's second is left to the period the dwell ends in.
    mid = periods[2].data
    hours_s = {state: round(mid["hours"][state] * 3600, 6) for state in STATES}
    assert hours_s == {"off": 20.0, "idle": 8.0, "running": 5.0, "overload": 0.0}
    assert mid["starts"] == 0 and periods[3].data["starts"] == 1
    assert periods[3].data["hours"]["running"] * 3600 == pytest.approx(22.0)


def test_the_2_kw_then_8_kw_replay_is_exact(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """20 s idle at 2,000 W, then 20 s at 8,000 W (running from 20 s, confirmed at 25 s).
    The dwell's 5 s at 8,000 W once counted as idle: 0.022 kWh instead of 0.011."""
    lines = [f"2026-03-02T08:00:{s:02d}Z,{2000.0 if s < 20 else 8000.0},"
             f"{(2000.0 * s if s <= 20 else 40000.0 + 8000.0 * (s - 20)) / 3600:.9f}"
             for s in range(40)]
    config, data = write(tmp_path, lines, meter=True)
    out = io.StringIO()
    run_replay(load_config(config).config, data, device_name=None, time_column="time",
               scores_path=None, out=out)
    [report] = [line for line in out.getvalue().splitlines() if " energy " in line]
    assert report.endswith("press interval: 0.053 kWh; idle 20 s 0.011 kWh, running 19 s "
                           "0.042 kWh; starts 0 (incomplete)")
    for meter in (True, False):
        config, data = write(tmp_path, lines, meter=meter)
        [last] = reports(replayed(config, data))
        idle_kwh = 20 * 2000 / 3.6e6 if meter else (19 * 2000 + 5000) / 3.6e6
        running_kwh = 19 * 8000 / 3.6e6
        assert last.data["kwh"]["idle"] == pytest.approx(idle_kwh, rel=1e-9)
        assert last.data["kwh"]["running"] == pytest.approx(running_kwh, rel=1e-9)
        assert last.data["hours"]["idle"] * 3600 == pytest.approx(20.0)
        assert last.data["hours"]["running"] * 3600 == pytest.approx(19.0)


def machine_detector(tmp_path: Path) -> MachineDetector:
    config = MachineConfig(name="comp", device="m1", power_tag="p", energy_counter_tag="e",
                           energy_counter_unit="Wh", idle_above_w=100, running_above_w=1000,
                           min_dwell_s=5, report_interval_s=3600)
    return MachineDetector("m1", [MachineSetup(config, max_gap_s=5.0, meter_modulus=2.0**32)],
                           StateFile(tmp_path / "machines" / "m1.json"))


def feed(d: MachineDetector, t_s: int, power_w: float, energy_wh: float) -> list[Event]:
    return d.on_batch(SampleBatch("m1", ("p", "e"), np.array([power_w, energy_wh]),
                                  np.zeros(2, dtype=np.uint8), T0 + t_s * S, t_s * S))


def test_a_dwell_in_progress_at_shutdown_stays_with_the_state_in_force(tmp_path: Path) -> None:
    d = machine_detector(tmp_path)
    for t in range(10):  # running at 3600 W (1 Wh/s); idle asked for from 7 s, unconfirmed
        feed(d, t, 3600.0 if t < 7 else 500.0, 1000.0 + t)
    [report] = d.flush(T0 + 9 * S)
    assert report.data["kwh"]["running"] == pytest.approx(0.009)
    assert report.data["hours"]["running"] * 3600 == pytest.approx(9.0)
    assert report.data["kwh"]["idle"] == 0.0


def test_a_save_mid_dwell_counts_it_in_the_state_in_force(tmp_path: Path) -> None:
    """A power cut then loses no meter energy: the counter's last value saved beside the
    totals already holds the dwell's."""
    d = machine_detector(tmp_path)
    for t in range(10):
        feed(d, t, 3600.0 if t < 7 else 500.0, 1000.0 + t)
    d._save()  # what the minute's save writes
    d.wait_saved()
    document = json.loads((tmp_path / "machines" / "m1.json").read_text())
    saved = document["data"]["comp"]
    assert saved["kwh"] == pytest.approx([0.0, 0.0, 0.009, 0.0])
    assert saved["seconds"] == pytest.approx([0.0, 0.0, 9.0, 0.0])
    assert saved["energy_counter"] == ["e", 1.0, 1009.0]
    assert d.level_of("comp", 9 * S) == IDLE, "saving leaves the dwell running"
    [change] = [e for e in feed(d, 12, 500.0, 1012.0) if e.kind == STATE]
    assert change.data["to"] == "idle" and change.data["at_ns"] == T0 + 7 * S
    [report] = d.flush(T0 + 12 * S)
    assert report.data["kwh"]["idle"] == pytest.approx(0.005)
    assert report.data["kwh"]["running"] == pytest.approx(0.007)


def test_a_state_file_of_the_release_before_loads(tmp_path: Path) -> None:
    """The machine row grew two columns (the dwell's energy and time); those are never saved,
    so the file keeps its layout: one written before the change restores as it did."""
    path = tmp_path / "machines" / "m1.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"schema":1,"data":{"comp":{"kwh":[0.5,1.5,20.0,0.0],'
                    '"seconds":[10.0,20.0,30.0,0.0],"starts":3.0,"cycles":0.0,"resets":0.0,'
                    '"unmeasured_s":0.0,"energy_counter":["e",1.0,500.0],'
                    '"cycle_counter":[null,0.0,0.0]}}}')
    state_file._latest.clear()
    d = machine_detector(tmp_path)
    feed(d, 0, 3600.0, 502.0)  # 2 Wh counted while the agent was down: the first state's
    [report] = d.flush(T0)
    assert report.data["totals"]["kwh"] == pytest.approx(
        {"off": 0.5, "idle": 1.5, "running": 20.002, "overload": 0.0})
    assert report.data["totals"]["starts"] == 3
