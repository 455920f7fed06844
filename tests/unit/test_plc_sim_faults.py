"""Fault scenarios of the simulated compressor: each shows in its signals, carries its
ground-truth label, and the fault-free machine is unchanged by the machinery."""

from __future__ import annotations

import itertools
import statistics

import pytest

from plc_sim.compressor import Compressor, CompressorState, MachineState
from plc_sim.compressor_modbus import served_readings, trace_record
from plc_sim.faults import FAULT_KINDS, Fault
from plc_sim.scenarios import SCENARIOS, ScenarioOptions

ONSET_S = 200.0


def run(fault: Fault | None, sim_s: float = 500.0, seed: int = 3) -> list[CompressorState]:
    compressor = Compressor(seed=seed, fault=fault)
    return [compressor.advance(0.5) for _ in range(int(sim_s / 0.5))]


def before_after(states: list[CompressorState], value: str,
                 when: MachineState | None = MachineState.RUNNING) -> tuple[float, float]:
    def mean(part: list[CompressorState]) -> float:
        return statistics.fmean(getattr(s, value) for s in part
                                if when is None or s.machine_state is when)

    before = [s for s in states if s.sim_time_s < ONSET_S]
    after = [s for s in states if s.fault_severity >= 1.0]
    return mean(before), mean(after)


def test_labels_say_when_the_fault_is_active() -> None:
    states = run(Fault("overheating", onset_s=ONSET_S, ramp_s=50.0))
    assert all(s.fault is None for s in states if s.sim_time_s <= ONSET_S)
    assert all(s.fault == "overheating" for s in states if s.sim_time_s > ONSET_S + 0.5)
    assert max(s.fault_severity for s in states) == 1.0
    record = trace_record(states[-1])
    assert record["fault"] == "overheating" and record["fault_severity"] == 1.0


def test_bearing_wear_raises_vibration_and_current() -> None:
    states = run(Fault("bearing-wear", onset_s=ONSET_S, ramp_s=50.0))
    vib_before, vib_after = before_after(states, "vibration_mm_s")
    cur_before, cur_after = before_after(states, "motor_current_a")
    assert vib_after > vib_before + 5.0
    assert cur_after == pytest.approx(cur_before * 1.08, rel=0.02)


def test_overheating_raises_the_temperature() -> None:
    states = run(Fault("overheating", onset_s=ONSET_S, ramp_s=50.0))
    before, after = before_after(states, "temperature_c")
    assert after > before + 15.0


def test_clogged_filter_lowers_flow_not_pressure_rise() -> None:
    states = run(Fault("clogged-filter", onset_s=ONSET_S, ramp_s=50.0))
    before, after = before_after(states, "air_flow_m3_min")
    assert after == pytest.approx(before * 0.5, rel=0.05)
    # The pressure still cycles between the load and unload thresholds.
    assert max(s.pressure_bar for s in states if s.fault_severity >= 1.0) > 7.4


def test_stuck_sensor_freezes_the_reading_only() -> None:
    states = run(Fault("stuck-sensor", onset_s=ONSET_S, ramp_s=0.0))
    stuck = [s for s in states if s.fault is not None]
    assert len({s.pressure_reading_bar for s in stuck}) == 1
    assert len({round(s.pressure_bar, 3) for s in stuck}) > 10
    assert served_readings(stuck[-1]).discharge_pressure_bar == pytest.approx(
        stuck[0].pressure_reading_bar, abs=0.01)


def test_left_idling_never_switches_off() -> None:
    states = run(Fault("left-idling", onset_s=ONSET_S, ramp_s=0.0), sim_s=800.0)
    late = [s for s in states if s.sim_time_s > ONSET_S + 60]
    assert all(s.machine_state is not MachineState.OFF for s in late)
    idle_share = sum(s.machine_state is MachineState.IDLE for s in late) / len(late)
    assert idle_share > 0.8


def test_load_cycles_count_loads_and_wrap_at_16_bits() -> None:
    states = run(None, sim_s=600.0)
    loads = sum(1 for a, b in itertools.pairwise(states)
                if a.machine_state is not MachineState.RUNNING
                and b.machine_state is MachineState.RUNNING)
    assert states[-1].load_cycles - states[0].load_cycles == loads
    assert served_readings(states[-1]).load_cycles == states[-1].load_cycles % 65536


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_every_fault_is_a_scenario(kind: str) -> None:
    machine = SCENARIOS[kind].factory(ScenarioOptions(seed=1, fault_onset_s=0.0))
    machine.advance(100.0)
    assert machine.scenario == kind and machine.trace_record()["fault"] == kind


def test_the_fault_free_scenario_never_has_a_label() -> None:
    assert all(s.fault is None for s in run(None))


def test_fault_periods_from_trace_labels() -> None:
    from plc_sim.trace import FaultPeriod, fault_periods

    records = [{"time_ns": t, "fault": f} for t, f in
               [(1, None), (2, "overheating"), (3, "overheating"), (4, None), (5, "stuck-sensor")]]
    assert fault_periods(records) == [FaultPeriod("overheating", 2, 4),
                                      FaultPeriod("stuck-sensor", 5, None)]
    assert fault_periods([{"time_ns": 1, "fault": None}]) == []
