"""Physics and control model of a retrofitted screw air compressor with an energy meter.

This is the machine the edge agent watches in the demo and in end-to-end tests.
It is a pure model: no I/O, no clock, no protocol. Time only moves when the
caller says so (`step` / `Compressor.advance`), and every random draw comes
from a caller-supplied, seeded `random.Random`, so a run is reproducible from
its seed and the tests can drive hours of machine time in milliseconds. The vibration
waveform of a state (`plc_sim.vibration`) is computed from the state and the seed only
when it is asked for, with a generator of its own.

The behaviour is the classic load/unload control of a fixed-speed compressor:

* RUNNING (loaded): the motor drives the air end, pressure rises, high power.
* IDLE (unloaded): the motor spins with the inlet closed, pressure falls as the
  plant draws air, roughly a third of the full-load power is wasted.
* OFF: after idling for too long the controller stops the motor to save that
  idle power; it restarts after a pause, starting unloaded (star-delta start).

Parameters default to seconds-scale timings so that a live demo shows all three
states within about two minutes of simulated time.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from enum import IntEnum

from plc_sim.faults import Fault, effects


class MachineState(IntEnum):
    """Operating state, with the codes the register map serves."""

    OFF = 0
    IDLE = 1
    RUNNING = 2


@dataclass(frozen=True, slots=True)
class CompressorParams:
    """Tuning of the model; the defaults describe a 7.5 kW compressor on a fast demo timescale."""

    load_pressure_bar: float = 6.5
    """Below this discharge pressure the controller loads the compressor."""
    unload_pressure_bar: float = 7.5
    """Above this discharge pressure the controller unloads it."""
    max_pressure_bar: float = 10.0
    """Safety valve: the pressure never exceeds this."""

    supply_bar_per_s: float = 0.12
    """Pressure rise per second when loaded and nothing is drawn (air end output / tank size)."""
    demand_mean_bar_per_s: float = 0.04
    """Average plant air demand, as the pressure fall per second it causes."""
    demand_min_bar_per_s: float = 0.015
    demand_max_bar_per_s: float = 0.09
    demand_reversion_per_s: float = 0.02
    """How fast demand drifts back to its mean (slowly: shifts, not noise)."""
    demand_volatility: float = 0.006
    """Diffusion of the demand random walk, in (bar/s) per sqrt(s)."""

    start_unloaded_s: float = 3.0
    """After switching on, the motor runs unloaded this long before it may load."""
    max_idle_s: float = 20.0
    """Idling longer than this switches the motor off."""
    off_duration_s: float = 15.0
    """Pause before the controller switches the motor on again."""

    running_power_w: float = 7500.0
    idle_power_w: float = 2200.0
    off_power_w: float = 4.0
    """Standby draw of the controller and meter."""
    power_noise_w: float = 35.0
    off_power_noise_w: float = 0.5

    line_voltage_v: float = 400.0
    """Line-to-line voltage of the three-phase supply."""
    power_factor: float = 0.85
    current_noise_a: float = 0.03

    running_temp_c: float = 80.0
    idle_temp_c: float = 65.0
    ambient_temp_c: float = 20.0
    temp_time_constant_s: float = 25.0
    """First-order lag of the discharge temperature toward its state's target."""

    vibration_running_mm_s: float = 2.2
    vibration_idle_mm_s: float = 1.2
    vibration_off_mm_s: float = 0.05
    vibration_noise_mm_s: float = 0.08
    """Vibration velocity RMS at the motor bearing (ISO 10816 class I: below 2.8 is good)."""
    rated_flow_m3_min: float = 1.2
    """Free air delivery when loaded; nothing is delivered unloaded or off."""
    flow_noise_m3_min: float = 0.01

    max_step_s: float = 0.5
    """Longer steps are split so control decisions happen at least this often."""


@dataclass(frozen=True, slots=True)
class CompressorState:
    """Everything the model knows at one instant; immutable so snapshots can be shared freely."""

    sim_time_s: float
    machine_state: MachineState
    time_in_state_s: float
    """Time since the last state change; drives the start delay and the idle/off timers."""
    pressure_bar: float
    """Discharge (tank) pressure, gauge."""
    demand_bar_per_s: float
    temperature_c: float
    active_power_w: float
    """Power drawn during the step that produced this state (constant over that step)."""
    motor_current_a: float
    energy_wh: float
    """Meter reading; only ever grows, by exactly power * dt of each step."""
    motor_on_s: float
    """Accumulated time with the motor on (IDLE or RUNNING)."""
    vibration_mm_s: float = 0.0
    bearing_defect_mm_s: float = 0.0
    """What the bearing defect adds to the vibration RMS (the bearing-wear fault's
    `vibration_add_mm_s`; 0 with the motor off): sizes the defect tone of the waveform
    (`plc_sim.vibration`)."""
    air_flow_m3_min: float = 0.0
    pressure_reading_bar: float = 0.0
    """What the pressure sensor reports: the pressure, unless the sensor is stuck."""
    load_cycles: int = 0
    """Number of times the compressor loaded (idle -> running): its cycle counter."""
    fault: str | None = None
    """The fault active during the step that produced this state (ground truth), or None."""
    fault_severity: float = 0.0

    @property
    def operating_s(self) -> int:
        """The operating-hours counter as the controller shows it: whole seconds."""
        return int(self.motor_on_s)


def line_current_a(power_w: float, params: CompressorParams) -> float:
    """Phase current of a balanced three-phase load: I = P / (sqrt(3) * U * pf)."""
    return power_w / (math.sqrt(3.0) * params.line_voltage_v * params.power_factor)


def initial_state(
    params: CompressorParams | None = None,
    *,
    energy_wh: float = 1_234_567.0,
    motor_on_s: float = 3_600.0 * 4_321,
    load_cycles: int = 65_500,
) -> CompressorState:
    """A compressor found running just above its load threshold, with a well-used meter.

    The counters start high on purpose: a retrofitted machine is never new, and
    big values exercise the 32-bit encodings; the 16-bit cycle counter wraps soon.
    """
    p = params or CompressorParams()
    return CompressorState(
        sim_time_s=0.0,
        machine_state=MachineState.RUNNING,
        time_in_state_s=0.0,
        pressure_bar=p.load_pressure_bar + 0.1,
        demand_bar_per_s=p.demand_mean_bar_per_s,
        temperature_c=p.running_temp_c - 10.0,
        active_power_w=p.running_power_w,
        motor_current_a=line_current_a(p.running_power_w, p),
        energy_wh=energy_wh,
        motor_on_s=motor_on_s,
        vibration_mm_s=p.vibration_running_mm_s,
        air_flow_m3_min=p.rated_flow_m3_min,
        pressure_reading_bar=p.load_pressure_bar + 0.1,
        load_cycles=load_cycles,
    )


def _next_machine_state(
    state: CompressorState, params: CompressorParams, never_switch_off: bool = False
) -> MachineState:
    """The controller's decision for the coming step, from the state at its start."""
    current = state.machine_state
    if current is MachineState.OFF:
        if state.time_in_state_s >= params.off_duration_s:
            return MachineState.IDLE
        return current
    if current is MachineState.IDLE:
        may_load = state.time_in_state_s >= params.start_unloaded_s
        if may_load and state.pressure_bar < params.load_pressure_bar:
            return MachineState.RUNNING
        if state.time_in_state_s >= params.max_idle_s and not never_switch_off:
            return MachineState.OFF
        return current
    if state.pressure_bar > params.unload_pressure_bar:
        return MachineState.IDLE
    return current


def _nominal_power_w(machine_state: MachineState, params: CompressorParams) -> tuple[float, float]:
    """Mean and noise of the active power in a state."""
    if machine_state is MachineState.RUNNING:
        return params.running_power_w, params.power_noise_w
    if machine_state is MachineState.IDLE:
        return params.idle_power_w, params.power_noise_w
    return params.off_power_w, params.off_power_noise_w


def vibration_level_mm_s(machine_state: MachineState, params: CompressorParams) -> float:
    """The vibration RMS of a healthy machine in a state, before the reading's noise."""
    if machine_state is MachineState.RUNNING:
        return params.vibration_running_mm_s
    if machine_state is MachineState.IDLE:
        return params.vibration_idle_mm_s
    return params.vibration_off_mm_s


def _target_temp_c(machine_state: MachineState, params: CompressorParams) -> float:
    if machine_state is MachineState.RUNNING:
        return params.running_temp_c
    if machine_state is MachineState.IDLE:
        return params.idle_temp_c
    return params.ambient_temp_c


def _single_step(
    state: CompressorState, dt_s: float, rng: random.Random, params: CompressorParams,
    fault: Fault | None = None,
) -> CompressorState:
    severity, fx = effects(fault, state.sim_time_s)
    machine_state = _next_machine_state(state, params, fx.never_switch_off)
    time_in_state = 0.0 if machine_state is not state.machine_state else state.time_in_state_s

    # Plant demand: a mean-reverting random walk (Ornstein-Uhlenbeck), so it
    # drifts over tens of seconds instead of jumping every tick.
    demand = state.demand_bar_per_s
    demand += params.demand_reversion_per_s * (params.demand_mean_bar_per_s - demand) * dt_s
    demand += params.demand_volatility * math.sqrt(dt_s) * rng.gauss(0.0, 1.0)
    demand = min(max(demand, params.demand_min_bar_per_s), params.demand_max_bar_per_s)
    if fx.demand_bar_per_s is not None:
        demand = fx.demand_bar_per_s

    supply = params.supply_bar_per_s if machine_state is MachineState.RUNNING else 0.0
    pressure = state.pressure_bar + (supply - demand) * dt_s
    pressure = min(max(pressure, 0.0), params.max_pressure_bar)

    # Exact solution of the first-order lag over the step, stable for any dt.
    target = _target_temp_c(machine_state, params)
    if machine_state is not MachineState.OFF:
        target += fx.temperature_add_c
    alpha = 1.0 - math.exp(-dt_s / params.temp_time_constant_s)
    temperature = state.temperature_c + (target - state.temperature_c) * alpha

    mean_w, noise_w = _nominal_power_w(machine_state, params)
    power = max(0.0, rng.gauss(mean_w * fx.power_factor, noise_w))
    current = max(0.0, line_current_a(power, params) + rng.gauss(0.0, params.current_noise_a))
    bearing = fx.vibration_add_mm_s if machine_state is not MachineState.OFF else 0.0
    vibration = vibration_level_mm_s(machine_state, params) + bearing
    vibration = max(0.0, vibration + rng.gauss(0.0, params.vibration_noise_mm_s))
    flow = 0.0
    if machine_state is MachineState.RUNNING:
        flow = max(0.0, params.rated_flow_m3_min * fx.flow_factor
                   + rng.gauss(0.0, params.flow_noise_m3_min))
    loaded = machine_state is MachineState.RUNNING and state.machine_state is not MachineState.RUNNING

    motor_on = state.motor_on_s + (dt_s if machine_state is not MachineState.OFF else 0.0)
    return replace(
        state,
        sim_time_s=state.sim_time_s + dt_s,
        machine_state=machine_state,
        time_in_state_s=time_in_state + dt_s,
        pressure_bar=pressure,
        demand_bar_per_s=demand,
        temperature_c=temperature,
        active_power_w=power,
        motor_current_a=current,
        energy_wh=state.energy_wh + power * dt_s / 3600.0,
        motor_on_s=motor_on,
        vibration_mm_s=vibration,
        bearing_defect_mm_s=bearing,
        air_flow_m3_min=flow,
        pressure_reading_bar=state.pressure_reading_bar if fx.pressure_sensor_stuck else pressure,
        load_cycles=state.load_cycles + (1 if loaded else 0),
        fault=fault.kind if fault is not None and severity > 0.0 else None,
        fault_severity=severity,
    )


def step(
    state: CompressorState,
    dt_s: float,
    rng: random.Random,
    params: CompressorParams | None = None,
    fault: Fault | None = None,
) -> CompressorState:
    """The state `dt_s` simulated seconds later (with `fault` injected when given).

    Steps longer than `params.max_step_s` are split into equal sub-steps so a
    late timer (or a high speed factor) cannot make the controller miss its
    thresholds. The energy counter grows by exactly the sum of
    `active_power_w * dt / 3600` over the sub-steps; the returned
    `active_power_w` is the one of the last sub-step.
    """
    if dt_s < 0.0 or not math.isfinite(dt_s):
        raise ValueError(f"dt_s must be a finite, non-negative number of seconds, got {dt_s!r}")
    p = params or CompressorParams()
    if dt_s == 0.0:
        return state
    parts = max(1, math.ceil(dt_s / p.max_step_s))
    sub_dt = dt_s / parts
    for _ in range(parts):
        state = _single_step(state, sub_dt, rng, p, fault)
    return state


class Compressor:
    """A compressor that keeps its own state and random generator between steps.

    The servers hold one of these; tests that want the pure function use `step`.
    """

    def __init__(
        self,
        seed: int = 1,
        params: CompressorParams | None = None,
        state: CompressorState | None = None,
        fault: Fault | None = None,
    ) -> None:
        self.params = params or CompressorParams()
        self.seed = seed
        """Also seeds the vibration waveform (`plc_sim.vibration`)."""
        self.fault = fault
        self.state = state or initial_state(self.params)
        self._rng = random.Random(seed)

    def advance(self, dt_s: float) -> CompressorState:
        """Move the machine `dt_s` simulated seconds forward and return the new state."""
        self.state = step(self.state, dt_s, self._rng, self.params, self.fault)
        return self.state
