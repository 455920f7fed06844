"""The machine detector: state and energy events, report schedule, counters that survive a
restart (real files), the sharing of its events, and counter increases in windows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config.machines import MachineConfig
from agent.detect.machine import MachineDetector, MachineSetup
from agent.detect.state_file import StateFile
from agent.detect.window import WindowAggregator
from agent.events import ENERGY, STATE, Event
from drivers.samples import SampleBatch

S = 1_000_000_000
T0 = int(dt.datetime(2026, 3, 2, 5, 0, tzinfo=dt.UTC).timestamp()) * S


def machine(**overrides: Any) -> MachineConfig:
    fields: dict[str, Any] = {
        "name": "comp", "device": "m1", "power_tag": "p", "energy_counter_tag": "e",
        "energy_counter_unit": "Wh", "idle_above_w": 100, "running_above_w": 1000, "hysteresis_w": 50,
        "min_dwell_s": 2, "report_interval_s": 60, "demand_window_s": 10,
    }
    fields.update(overrides)
    return MachineConfig(**fields)


def detector(tmp_path: Path, config: MachineConfig | None = None) -> MachineDetector:
    setup = MachineSetup(config or machine(), max_gap_s=5.0, meter_modulus=2.0**32)
    return MachineDetector("m1", [setup], StateFile(tmp_path / "machines" / "m1.json"))


def batch(t_s: float, power_w: float, energy_wh: float | None = None,
          tags: tuple[str, ...] = ("p", "e", "other")) -> SampleBatch:
    values = {"p": power_w, "e": energy_wh if energy_wh is not None else 0.0, "other": 7.0}
    quality = [0 if (t != "e" or energy_wh is not None) else 2 for t in tags]
    return SampleBatch("m1", tags, np.array([values[t] for t in tags]),
                       np.array(quality, dtype=np.uint8), T0 + int(t_s * S), int(t_s * S))


def run(d: MachineDetector, samples: list[tuple[float, float, float | None]]) -> list[Event]:
    events: list[Event] = []
    for t, p, e in samples:
        events += d.on_batch(batch(t, p, e))
    return events


def test_state_events_carry_from_to_at_and_dwell(tmp_path: Path) -> None:
    d = detector(tmp_path)
    events = run(d, [(t, 3000.0 if t < 10 else 500.0, None) for t in range(20)])
    states = [e for e in events if e.kind == STATE]
    assert [(e.data["from"], e.data["to"]) for e in states] == [(None, "running"),
                                                                 ("running", "idle")]
    change = states[1]
    assert change.data["at_ns"] == change.time_ns == T0 + 10 * S
    assert change.data["dwell_s"] == 10.0
    assert change.data["machine"] == "comp" and change.data["tag"] == "p"


def test_energy_report_per_interval_from_the_meter(tmp_path: Path) -> None:
    d = detector(tmp_path)
    # Running 30 s at 3600 W (1 Wh/s), then idle at 720 W (0.2 Wh/s) for 40 s.
    samples, wh = [], 1000.0
    for t in range(71):
        p = 3600.0 if t < 30 else 720.0
        samples.append((float(t), p, wh))
        wh += p / 3600
    events = run(d, samples)
    [report] = [e for e in events if e.kind == ENERGY]
    data = report.data
    assert data["period"] == "interval" and data["complete"] is True
    assert data["energy_source"] == "meter"
    # 30 Wh running; idle from 30 s: the 2 s of dwell that confirm it are idle's too.
    assert data["kwh"]["running"] == pytest.approx(0.030, abs=1e-9)
    # The report closes at 60 s before the sample of 60 s is folded in.
    assert data["idle_kwh"] == pytest.approx(29 * 0.2 / 1000, abs=1e-9)
    assert data["starts"] == 0 and data["counter_resets"] == 0
    assert data["peak_demand_w"] == pytest.approx(3600.0)
    assert data["hours"]["running"] == pytest.approx(30 / 3600)
    assert data["operating_h"] == pytest.approx(59 / 3600)
    assert data["start_ns"] == T0 and data["end_ns"] == report.time_ns == T0 + 60 * S


def test_energy_by_integration_without_a_meter(tmp_path: Path) -> None:
    d = detector(tmp_path, machine(energy_counter_tag=None))
    run(d, [(float(t), 1800.0, None) for t in range(11)])
    [report] = d.flush(T0 + 10 * S)
    assert report.data["energy_source"] == "power" and report.data["complete"] is False
    assert report.data["kwh"]["running"] == pytest.approx(1800 * 10 / 3.6e6)


def test_shift_reports_at_local_shift_changes(tmp_path: Path) -> None:
    # T0 is 05:00 UTC = 06:00 in Berlin (winter): the early shift starts at T0.
    d = detector(tmp_path, machine(shifts=["14:00", "06:00", "22:00"], timezone="Europe/Berlin",
                                   report_interval_s=86400))
    d.on_batch(batch(0, 3000.0, 0.0))
    assert d.on_tick(8 * 3600 * S - 1, T0 + 8 * 3600 * S - 1) == []
    [report] = d.on_tick(8 * 3600 * S, T0 + 8 * 3600 * S)
    assert report.data["period"] == "shift" and report.data["shift"] == "06:00"
    [nxt] = d.on_tick(16 * 3600 * S, T0 + 16 * 3600 * S)
    assert nxt.data["shift"] == "14:00" and nxt.data["start_ns"] == T0 + 8 * 3600 * S


def test_counters_survive_a_restart(tmp_path: Path) -> None:
    d = detector(tmp_path)
    # running, off from 2 s (confirmed at 4 s), running again from 5 s (confirmed at 7 s)
    run(d, [(0, 3000.0, 500.0), (1, 3000.0, 501.0), (2, 0.0, 502.0), (3, 0.0, 502.0),
            (4, 0.0, 502.0), (5, 3000.0, 502.0), (6, 3000.0, 502.0), (7, 3000.0, 503.0)])
    d.flush(T0 + 7 * S)
    d.wait_saved()
    saved = (tmp_path / "machines" / "m1.json").read_text()
    assert '"starts":1.0' in saved

    # A new process: nothing in memory, the meter has moved on meanwhile.
    from agent.detect import state_file

    state_file._latest.clear()
    again = detector(tmp_path)
    run(again, [(100, 3000.0, 603.0), (101, 3000.0, 604.0)])
    [report] = again.flush(T0 + 101 * S)
    totals = report.data["totals"]
    assert totals["starts"] == 1
    # 3 Wh running before (the last in the dwell back to running), 100 Wh over the restart,
    # 1 Wh after: the counter's last raw value was kept, so nothing the meter counted is lost.
    assert totals["kwh"]["running"] == pytest.approx(0.104, abs=1e-9)
    assert totals["kwh"]["off"] == pytest.approx(0.0, abs=1e-9)
    assert report.data["kwh"]["running"] == pytest.approx(0.101, abs=1e-9)


def test_a_counter_of_another_tag_is_not_restored(tmp_path: Path) -> None:
    d = detector(tmp_path)
    run(d, [(0, 3000.0, 500.0), (1, 3000.0, 501.0)])
    d.flush(T0 + S)
    d.wait_saved()
    from agent.detect import state_file

    state_file._latest.clear()
    other = detector(tmp_path, machine(energy_counter_tag="other"))
    events = [e for t in (10, 11) for e in other.on_batch(batch(t, 3000.0, 9.0))]
    assert not [e for e in events if e.kind == ENERGY]
    [report] = other.flush(T0 + 11 * S)
    assert report.data["kwh"]["running"] == 0.0, "7.0 from `other` is a baseline, not an increase"


def test_an_unreadable_counter_file_is_a_fresh_start(tmp_path: Path) -> None:
    path = tmp_path / "machines" / "m1.json"
    path.parent.mkdir()
    path.write_text("{not json")
    d = detector(tmp_path)
    run(d, [(0, 3000.0, 1.0)])
    [report] = d.flush(T0)
    assert report.data["totals"]["starts"] == 0


def test_window_gives_counter_increase_and_resets() -> None:
    agg = WindowAggregator("m1", ["e", "p"], {}, window_s=60, counters={"e": 65536.0})
    for t, e in enumerate([65000.0, 65530.0, 10.0, 20.0, 5.0]):
        agg.on_batch(SampleBatch("m1", ("e", "p"), np.array([e, 1.0]),
                                 np.zeros(2, dtype=np.uint8), T0 + t * S, t * S))
    [event] = agg.flush(T0)
    entry = event.data["tags"]["e"]
    assert entry["increase"] == 530 + 16 + 10 + 5 and entry["resets"] == 1
    assert "increase" not in event.data["tags"]["p"]


def test_window_counter_increase_spans_a_restart(tmp_path: Path) -> None:
    from agent.detect import state_file

    def window(values: list[float], t0: int) -> Event:
        store = StateFile(tmp_path / "counters" / "m1.json")
        agg = WindowAggregator("m1", ["e"], {}, window_s=60, counters={"e": 65536.0}, store=store)
        for t, e in enumerate(values):
            agg.on_batch(SampleBatch("m1", ("e",), np.array([e]), np.zeros(1, dtype=np.uint8),
                                     T0 + (t0 + t) * S, (t0 + t) * S))
        [event] = agg.flush(T0)
        store.wait_saved()
        state_file._latest.clear()  # as a new process would start
        return event

    assert window([100.0, 110.0], 0).data["tags"]["e"]["increase"] == 10.0
    assert window([150.0, 151.0], 100).data["tags"]["e"]["increase"] == 41.0
