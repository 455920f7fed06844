"""The compressor model alone: physics, control and reproducibility, no I/O."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace

import pytest

from plc_sim.compressor import (
    Compressor,
    CompressorParams,
    CompressorState,
    MachineState,
    initial_state,
    line_current_a,
    step,
)

DT_S = 0.1
PARAMS = CompressorParams()


def run(seed: int, sim_s: float, dt_s: float = DT_S) -> list[CompressorState]:
    """States after each step of a fresh compressor (the initial state first)."""
    compressor = Compressor(seed=seed)
    states = [compressor.state]
    for _ in range(round(sim_s / dt_s)):
        states.append(compressor.advance(dt_s))
    return states


def test_energy_counter_is_monotonic_and_the_integral_of_power() -> None:
    states = run(seed=1, sim_s=600.0)

    energies = [s.energy_wh for s in states]
    assert all(b >= a for a, b in itertools.pairwise(energies))
    served = [int(e) for e in energies]
    assert all(b >= a for a, b in itertools.pairwise(served))
    # Each state's power was drawn during the step that produced it.
    integral_wh = math.fsum(s.active_power_w * DT_S / 3600.0 for s in states[1:])
    assert energies[-1] - energies[0] == pytest.approx(integral_wh, abs=1e-6)
    assert energies[0] == 1_234_567.0
    # Ten minutes of a 2-7.5 kW machine: a plausible amount, not a trivial one.
    assert 100.0 < integral_wh < 7500.0 * 600.0 / 3600.0


def test_long_steps_are_split_but_energy_still_integrates() -> None:
    state = initial_state(PARAMS)
    later = step(state, 10.0, random.Random(3), PARAMS)

    assert later.sim_time_s == pytest.approx(10.0)
    gained = later.energy_wh - state.energy_wh
    # Whatever the states were, power stayed between off and loaded draw.
    assert 0.0 < gained < 1.1 * PARAMS.running_power_w * 10.0 / 3600.0


def test_all_three_states_are_visited_within_two_minutes_with_seed_1() -> None:
    states = run(seed=1, sim_s=120.0)

    assert {s.machine_state for s in states} == set(MachineState)


@pytest.mark.parametrize("seed", range(20))
def test_every_seed_visits_all_states_within_ten_minutes(seed: int) -> None:
    states = run(seed=seed, sim_s=600.0)

    assert {s.machine_state for s in states} == set(MachineState)


def test_current_is_consistent_with_power() -> None:
    states = run(seed=2, sim_s=300.0)
    tolerance_a = 6 * PARAMS.current_noise_a

    for s in states[1:]:
        expected = s.active_power_w / (math.sqrt(3.0) * 400.0 * 0.85)
        assert s.motor_current_a == pytest.approx(expected, abs=tolerance_a)
    running = [s for s in states if s.machine_state is MachineState.RUNNING]
    assert running
    assert line_current_a(7500.0, PARAMS) == pytest.approx(12.74, abs=0.01)


def test_power_and_temperature_follow_the_state() -> None:
    states = run(seed=4, sim_s=600.0)

    for s in states[1:]:
        if s.machine_state is MachineState.RUNNING:
            assert s.active_power_w == pytest.approx(7500.0, abs=300.0)
        elif s.machine_state is MachineState.IDLE:
            assert s.active_power_w == pytest.approx(2200.0, abs=300.0)
        else:
            assert 0.0 <= s.active_power_w < 10.0
        assert PARAMS.ambient_temp_c - 0.5 <= s.temperature_c <= PARAMS.running_temp_c + 0.5
        assert 0.0 <= s.pressure_bar <= PARAMS.max_pressure_bar


def test_temperature_is_a_first_order_lag_toward_the_state_target() -> None:
    # Unloading made impossible, so the machine stays loaded for five time constants.
    params = replace(PARAMS, unload_pressure_bar=1000.0, max_pressure_bar=1000.0)
    state = replace(initial_state(params), temperature_c=20.0)
    state = step(state, 5 * params.temp_time_constant_s, random.Random(0), params)

    assert state.machine_state is MachineState.RUNNING
    expected = 80.0 + (20.0 - 80.0) * math.exp(-5)
    assert state.temperature_c == pytest.approx(expected, abs=1e-9)


def test_transitions_obey_the_controller_thresholds() -> None:
    states = run(seed=5, sim_s=900.0)

    transitions = 0
    for before, after in itertools.pairwise(states):
        if before.machine_state is after.machine_state:
            continue
        transitions += 1
        change = (before.machine_state, after.machine_state)
        if change == (MachineState.RUNNING, MachineState.IDLE):
            assert before.pressure_bar > PARAMS.unload_pressure_bar
        elif change == (MachineState.IDLE, MachineState.RUNNING):
            assert before.pressure_bar < PARAMS.load_pressure_bar
            assert before.time_in_state_s >= PARAMS.start_unloaded_s
        elif change == (MachineState.IDLE, MachineState.OFF):
            assert before.time_in_state_s >= PARAMS.max_idle_s
        elif change == (MachineState.OFF, MachineState.IDLE):
            assert before.time_in_state_s >= PARAMS.off_duration_s
        else:
            pytest.fail(f"impossible transition {change}")
    assert transitions > 10


def test_operating_seconds_count_motor_on_time_only() -> None:
    states = run(seed=1, sim_s=300.0)

    on_time = math.fsum(DT_S for s in states[1:] if s.machine_state is not MachineState.OFF)
    # The counter starts at 15.5e6 s: each addition rounds by up to ~1e-9 s (its ulp), and
    # 3000 steps can add up to a few microseconds.
    assert states[-1].motor_on_s - states[0].motor_on_s == pytest.approx(on_time, abs=1e-5)
    counters = [s.operating_s for s in states]
    assert all(isinstance(c, int) for c in counters)
    assert all(b >= a for a, b in itertools.pairwise(counters))
    off = [(a, b) for a, b in itertools.pairwise(states) if b.machine_state is MachineState.OFF]
    assert off
    assert all(a.motor_on_s == b.motor_on_s for a, b in off)


def test_same_seed_same_run_different_seed_different_run() -> None:
    assert run(seed=7, sim_s=120.0) == run(seed=7, sim_s=120.0)
    assert run(seed=7, sim_s=120.0) != run(seed=8, sim_s=120.0)


def test_step_is_pure() -> None:
    state = initial_state(PARAMS)
    first = step(state, 1.0, random.Random(9), PARAMS)
    again = step(state, 1.0, random.Random(9), PARAMS)

    assert first == again
    assert state == initial_state(PARAMS)
    assert step(state, 0.0, random.Random(9), PARAMS) is state


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan])
def test_step_rejects_impossible_durations(bad: float) -> None:
    with pytest.raises(ValueError, match="dt_s"):
        step(initial_state(PARAMS), bad, random.Random(0), PARAMS)
