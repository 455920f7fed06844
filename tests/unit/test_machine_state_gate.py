"""Rules with `while_states`: they learn and score only while their machine is settled in
those states, built as the agent builds them (`make_detector`, from a configuration file,
with a real state file), fed batches of a pump that runs, stops and starts again."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from agent.detect.base import Detector, ScoringDetector
from agent.detect.device import learned_of
from agent.events import ANOMALY, LIMIT, Event
from agent.testing import device_detector, offline_config
from drivers.samples import Quality, SampleBatch

S = 1_000_000_000
T0 = 1_700_000_000 * S
RUNNING_W, OFF_W = 5000.0, 20.0
TAGS = ("power_w", "vibration_mm_s", "pressure_bar")


def config(tmp_path: Path, rules: str) -> Path:
    return offline_config(tmp_path, f"""
devices:
  - name: pump
    protocol: modbus-tcp
    host: 127.0.0.1
    tags:
      - {{name: power_w, table: input, address: 0, type: float32, unit: W}}
      - {{name: vibration_mm_s, table: input, address: 2, type: float32, unit: mm/s}}
      - {{name: pressure_bar, table: input, address: 4, type: float32, unit: bar}}
machines:
  - {{name: pump, device: pump, power_tag: power_w, idle_above_w: 100,
     running_above_w: 1000, min_dwell_s: 5}}
detectors:
{rules}
""")


detector = device_detector


class Pump:
    """One batch per second: power, vibration and pressure of a pump that runs or stands."""

    def __init__(self, seed: int = 1) -> None:
        self.second = 0
        self.rng = np.random.default_rng(seed)

    def batches(self, seconds: int, *, running: bool, vibration: float | None = None,
                pressure: float | None = None,
                power_quality: Quality = Quality.GOOD) -> list[SampleBatch]:
        out = []
        for _ in range(seconds):
            power = RUNNING_W if running else OFF_W
            vib = vibration if vibration is not None else (
                2.0 + self.rng.normal(0.0, 0.1) if running else 0.02 + abs(self.rng.normal(0, 0.01)))
            bar = pressure if pressure is not None else (
                6.0 + self.rng.normal(0.0, 0.2) if running else 0.0)
            quality = np.array([power_quality, 0, 0], dtype=np.uint8)
            out.append(SampleBatch("pump", TAGS, np.array([power, vib, bar]), quality,
                                   T0 + self.second * S, self.second * S))
            self.second += 1
        return out


def feed(det: Detector, batches: list[SampleBatch],
         scores: list[float] | None = None, key: str = "") -> list[Event]:
    events = []
    for batch in batches:
        events += det.on_batch(batch)
        if scores is not None:
            assert isinstance(det, ScoringDetector)
            scores.append(det.scores()[key])
    return events


def episodes(events: list[Event], phase: str) -> list[Event]:
    return [e for e in events if e.kind in (ANOMALY, LIMIT) and e.data["phase"] == phase]


def stops_and_starts(pump: Pump) -> list[SampleBatch]:
    """Runs 5 min, stands 2 min, runs 3 min, stands 1 min, runs 2 min."""
    return (pump.batches(300, running=True) + pump.batches(120, running=False)
            + pump.batches(180, running=True) + pump.batches(60, running=False)
            + pump.batches(120, running=True))


ZSCORE = """  - {{device: pump, kind: zscore, name: vib, tags: [vibration_mm_s], warmup_samples: 100,
     threshold_z: 6 {gate}}}"""


def test_an_ungated_zscore_alarms_at_every_stop(tmp_path: Path) -> None:
    """What the gate is for: the vibration of a standing pump is 20 standard deviations
    under its running normal."""
    events = feed(detector(config(tmp_path, ZSCORE.format(gate=""))), stops_and_starts(Pump()))
    assert len(episodes(events, "start")) >= 2


def test_a_gated_zscore_learns_and_scores_only_while_running(tmp_path: Path) -> None:
    det = detector(config(tmp_path, ZSCORE.format(gate=", while_states: [running]")))
    scores: list[float] = []
    events = feed(det, stops_and_starts(Pump()), scores, "vib:vibration_mm_s")
    assert episodes(events, "start") == []
    # Not scored while standing, from the first sample the power says so (not after the
    # dwell time that the `state` events wait for), and scored from a run's first sample.
    standing = [scores[i] for i in range(300, 420)] + [scores[i] for i in range(600, 660)]
    assert all(math.isnan(s) for s in standing)
    assert not any(math.isnan(s) for s in scores[420:600])
    # The warm-up of 100 samples counted running samples only: the baseline is the
    # running level (a baseline through the stops would score the running pump high).
    assert max(abs(s) for s in scores[440:600]) < 5


def test_a_fault_while_running_is_still_reported(tmp_path: Path) -> None:
    det = detector(config(tmp_path, ZSCORE.format(gate=", while_states: [running]")))
    pump = Pump()
    events = feed(det, pump.batches(300, running=True) + pump.batches(120, running=False)
                  + pump.batches(60, running=True) + pump.batches(30, running=True, vibration=4.0))
    [start] = episodes(events, "start")
    assert start.data["start_ns"] == T0 + 480 * S


LIMIT_RULE = """  - {device: pump, kind: limits, name: vib-limit, tags: [vibration_mm_s], high: 3.0,
     while_states: [running]}"""


def test_an_episode_running_when_the_machine_stops_ends_there(tmp_path: Path) -> None:
    """A standstill is not time outside specification: the episode ends when the machine
    leaves `running` (marked ongoing, ended by the machine's state), and the next run over
    the limit is an episode of its own."""
    det = detector(config(tmp_path, LIMIT_RULE))
    pump = Pump()
    events = feed(det, pump.batches(60, running=True) + pump.batches(30, running=True, vibration=4.0)
                  + pump.batches(100, running=False, vibration=0.0)
                  + pump.batches(30, running=True, vibration=4.0))
    starts, ends = episodes(events, "start"), episodes(events, "end")
    assert [e.data["start_ns"] for e in starts] == [T0 + 60 * S, T0 + 190 * S]
    first = ends[0]
    assert first.data["episode"] == starts[0].data["episode"]
    assert first.data["ongoing"] is True and first.data["ended_by"] == "machine_state"
    assert first.data["end_ns"] == T0 + 90 * S  # the first sample of the stop
    assert first.data["duration_s"] == 30.0
    assert len(ends) == 1  # the second episode is still running


STUCK_RULE = """  - {device: pump, kind: stuck, name: frozen, tags: [pressure_bar], stuck_after_s: 60,
     silent_after_s: null, while_states: [running]}"""


def test_a_gated_stuck_rule_ignores_a_standstill_and_still_finds_a_frozen_sensor(
        tmp_path: Path) -> None:
    """The pressure of a standing pump is flat at 0 for 10 minutes: no time of it counts,
    nor the time across the stop (it reads 6.0 before and after); frozen while running it
    is a fault."""
    det = detector(config(tmp_path, STUCK_RULE))
    pump = Pump()
    events = feed(det, pump.batches(30, running=True, pressure=6.0)
                  + pump.batches(600, running=False) + pump.batches(50, running=True, pressure=6.0))
    assert episodes(events, "start") == []
    events = feed(det, pump.batches(30, running=True, pressure=6.0))
    [start] = episodes(events, "start")
    # Flat since the machine runs again, from 630.
    assert start.data["start_ns"] == T0 + (630 + 60) * S


def test_settle_s_keeps_a_start_up_transient_out(tmp_path: Path) -> None:
    """A start-up shakes the pump for 20 s; a rule that waits 30 s after each start sees none
    of it, one without settle_s reports it."""
    def run(settle: str) -> list[Event]:
        rule = LIMIT_RULE.replace("while_states: [running]",
                                  f"while_states: [running]{settle}")
        pump = Pump()
        return feed(detector(config(tmp_path / ("settle" if settle else "dwell"), rule)),
                    pump.batches(60, running=False)
                    + pump.batches(20, running=True, vibration=5.0)
                    + pump.batches(100, running=True))
    assert episodes(run(""), "start") != []
    assert episodes(run(", settle_s: 30"), "start") == []


def test_a_state_signal_that_stops_delivering_closes_the_gate(tmp_path: Path) -> None:
    """Without a power reading for longer than the machine's gap bound (5 polls) the state is
    unknown, and the rule sees nothing: no sample of a machine that may stand passes."""
    det = detector(config(tmp_path, ZSCORE.format(gate=", while_states: [running]")))
    pump = Pump()
    scores: list[float] = []
    feed(det, pump.batches(200, running=True) + pump.batches(20, running=True,
                                                                power_quality=Quality.BAD),
         scores, "vib:vibration_mm_s")
    assert not math.isnan(scores[199])
    assert not any(math.isnan(s) for s in scores[200:205])
    assert all(math.isnan(s) for s in scores[206:])


def test_what_a_gated_rule_learned_survives_a_restart_and_a_new_gate_learns_again(
        tmp_path: Path) -> None:
    gated = ZSCORE.format(gate=", while_states: [running]")
    det = detector(config(tmp_path, gated))
    pump = Pump()
    feed(det, pump.batches(200, running=True))
    det.flush(T0 + 200 * S)  # a clean stop: saved

    def state_after_restart(rules: str) -> str:
        again = detector(config(tmp_path, rules))
        holder = learned_of(again)
        assert holder is not None
        progress = holder.progress()
        assert progress is not None
        return str(progress["rules"]["vib"]["state"])

    assert state_after_restart(gated) == "learned"
    assert state_after_restart(gated.replace("[running]", "[running], settle_s: 60")) == "learning"
    assert state_after_restart(ZSCORE.format(gate="")) == "learning"


def test_relearn_of_a_gated_rule(tmp_path: Path) -> None:
    det = detector(config(tmp_path, ZSCORE.format(gate=", while_states: [running]")))
    pump = Pump()
    feed(det, pump.batches(200, running=True))
    holder = learned_of(det)
    assert holder is not None
    _, rows = holder.forget(["vib"], T0 + 200 * S)
    assert len(rows) == 1
    scores: list[float] = []
    feed(det, pump.batches(50, running=True), scores, "vib:vibration_mm_s")
    assert all(math.isnan(s) for s in scores)  # learning again (100 samples)


@pytest.mark.parametrize("states", ["[idle]", "[running, overload]"])
def test_rules_of_two_gates_on_one_device(tmp_path: Path, states: str) -> None:
    """Each gate has its own detectors: a rule gated on `idle` and one on `states` on the
    same tag, the same kind."""
    rules = (ZSCORE.format(gate=", while_states: [running]") + "\n"
             + ZSCORE.format(gate=f", while_states: {states}").replace("name: vib", "name: vib2"))
    det = detector(config(tmp_path, rules))
    scores: list[float] = []
    feed(det, Pump().batches(150, running=True), scores, "vib:vibration_mm_s")
    assert isinstance(det, ScoringDetector)
    assert not math.isnan(det.scores()["vib:vibration_mm_s"])
    assert math.isnan(det.scores()["vib2:vibration_mm_s"]) == (states == "[idle]")


PCA_RULE = """  - {{device: pump, kind: pca, name: agree, tags: [vibration_mm_s, pressure_bar],
     warmup_samples: 150, threshold_factor: 2.0, min_duration_s: 3 {gate}}}"""


def test_a_gated_pca_model_of_the_running_pump_leaves_its_stops_alone(tmp_path: Path) -> None:
    """A model of the running pump takes a standing one for a fault, unless it is gated; the
    gated one still reports vibration that no longer goes with the pressure."""
    ungated = feed(detector(config(tmp_path / "ungated", PCA_RULE.format(gate=""))),
                   stops_and_starts(Pump()))
    assert episodes(ungated, "start") != []
    det = detector(config(tmp_path / "gated", PCA_RULE.format(gate=", while_states: [running]")))
    pump = Pump()
    assert episodes(feed(det, stops_and_starts(pump)), "start") == []
    [start] = episodes(feed(det, pump.batches(30, running=True, vibration=3.5)), "start")
    assert start.data["detector"] == "pca"


def test_the_rules_waiting_for_their_state_are_named_for_status(tmp_path: Path) -> None:
    rules = (ZSCORE.format(gate=", while_states: [running]") + "\n" + LIMIT_RULE + "\n"
             + STUCK_RULE.replace("[running]", "[running], settle_s: 30"))
    det = detector(config(tmp_path, rules))
    holder = learned_of(det)
    assert holder is not None
    pump = Pump()
    feed(det, pump.batches(10, running=False))
    assert holder.paused() == {"vib": "pump in running", "vib-limit": "pump in running",
                               "frozen": "pump in running (settled 30 s)"}
    feed(det, pump.batches(10, running=True))
    assert holder.paused() == {"frozen": "pump in running (settled 30 s)"}
    feed(det, pump.batches(30, running=True))
    assert holder.paused() == {}


def two_poll_groups(batches: list[SampleBatch], *,
                    last_pressure: float | None = None) -> list[SampleBatch]:
    """The pump's tags read in two poll groups: power and vibration every second, the
    pressure every 10 s (at the seconds ending in 0); `last_pressure`: the value of the
    group's last reading (the pressure falling as the pump stops)."""
    out = []
    last = max((b for b in batches if (b.mono_ns // S) % 10 == 0), key=lambda b: b.mono_ns,
               default=None)
    for b in batches:
        good = np.zeros(2, dtype=np.uint8)
        out.append(SampleBatch("pump", TAGS[:2], b.values[:2].copy(), good, b.time_ns, b.mono_ns))
        if (b.mono_ns // S) % 10 == 0:
            bar = last_pressure if b is last and last_pressure is not None else b.values[2]
            out.append(SampleBatch("pump", TAGS[2:], np.array([bar]), good[:1], b.time_ns,
                                   b.mono_ns + 1))
    return out


@pytest.mark.parametrize("smoothing", ["", ", input_smoothing_halflife_samples: 5"])
def test_a_gated_pca_chart_restarts_after_a_stop(tmp_path: Path, smoothing: str) -> None:
    """A tag of a slower poll group keeps the value it last had before the stop (here read
    as the pressure was already falling): a row that paired it with the restarted pump's
    vibration would be a disagreement the sensors never showed, so the first row waits for
    a fresh value of every tag. And that last reading, scored while the pump still ran,
    must not reach into the next run through the smoothed statistics or rows."""
    gate = ", while_states: [running]" + smoothing
    det = detector(config(tmp_path, PCA_RULE.format(gate=gate)))
    pump = Pump()
    running = pump.batches(301, running=True)
    events = feed(det, two_poll_groups(running, last_pressure=2.0))
    events += feed(det, two_poll_groups(pump.batches(120, running=False)))
    assert isinstance(det, ScoringDetector)
    events += feed(det, two_poll_groups(pump.batches(9, running=True)))
    # Running again, the pressure not read since the stop: no row yet, nothing scored.
    assert math.isnan(det.scores()["agree"])
    events += feed(det, two_poll_groups(pump.batches(60, running=True)))
    assert episodes(events, "start") == []
    assert det.scores()["agree"] < 1.0
