"""A three-phase energy meter on a varying load: the physics behind the meter profiles.

The model is the same for every meter kind; only the register maps differ
(`plc_sim/meter_modbus.py`). What a client must be able to rely on:

* phase voltages wander slowly around 230 V (mean-reverting, σ 3 V, never
  beyond ±10 V), the frequency around 50 Hz (σ 0.05 Hz, never beyond ±0.15 Hz);
* each phase current follows one load profile: a base load, a slow cycle (a
  machine's duty cycle, period 120 s) and noise, with a fixed imbalance per
  phase; the power factor follows the load (lightly loaded motors are worse);
* every power is consistent with the rest: P = V·I·pf, S = V·I, Q = √(S² − P²)
  (inductive, so positive), totals are sums over the phases;
* line-to-line voltages and the neutral current are the phasor results for a
  balanced 120° system;
* the energy counters integrate power exactly (import active in Wh, import
  reactive in varh); the load never feeds back, so the export counters stay at
  their initial values.
"""

from __future__ import annotations

import cmath
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

MAX_STEP_S = 0.5
"""Longer advances are split so the random walks keep their statistics."""

NOMINAL_V = 230.0
NOMINAL_HZ = 50.0
Phases = tuple[float, float, float]
"""One value per phase, L1, L2, L3."""

PHASE_IMBALANCE: Phases = (1.0, 0.93, 1.07)
"""Each phase's share of the load profile's current (an unevenly wired workshop)."""


def _phases(values: Iterable[float]) -> Phases:
    a, b, c = values
    return (a, b, c)


@dataclass(frozen=True, slots=True)
class MeterParams:
    base_current_a: float = 18.0
    cycle_current_a: float = 9.0
    cycle_period_s: float = 120.0
    current_noise_a: float = 0.3
    voltage_spread_v: float = 3.0
    voltage_reversion_per_s: float = 0.05
    frequency_spread_hz: float = 0.05


@dataclass(frozen=True, slots=True)
class MeterState:
    """Instantaneous readings and counters; every value in SI-ish units named in the field."""

    sim_time_s: float
    voltage_v: Phases
    current_a: Phases
    power_factor: Phases
    frequency_hz: float
    import_energy_wh: float
    export_energy_wh: float
    import_reactive_varh: float
    export_reactive_varh: float

    @property
    def apparent_power_va(self) -> Phases:
        v, i = self.voltage_v, self.current_a
        return (v[0] * i[0], v[1] * i[1], v[2] * i[2])

    @property
    def active_power_w(self) -> Phases:
        s, pf = self.apparent_power_va, self.power_factor
        return (s[0] * pf[0], s[1] * pf[1], s[2] * pf[2])

    @property
    def reactive_power_var(self) -> Phases:
        s, p = self.apparent_power_va, self.active_power_w
        return _phases(math.sqrt(max(sk * sk - pk * pk, 0.0)) for sk, pk in zip(s, p, strict=True))

    @property
    def total_active_power_w(self) -> float:
        return sum(self.active_power_w)

    @property
    def total_apparent_power_va(self) -> float:
        return sum(self.apparent_power_va)

    @property
    def total_reactive_power_var(self) -> float:
        return sum(self.reactive_power_var)

    @property
    def total_power_factor(self) -> float:
        s = self.total_apparent_power_va
        return self.total_active_power_w / s if s > 0.0 else 1.0

    @property
    def line_voltage_v(self) -> Phases:
        """L1-L2, L2-L3, L3-L1: |Va − Vb| for phasors 120° apart."""
        a, b, c = _phasors(self.voltage_v, (0.0, 0.0, 0.0))
        return (abs(a - b), abs(b - c), abs(c - a))

    @property
    def neutral_current_a(self) -> float:
        """|Ia + Ib + Ic|, each current lagging its voltage by acos(pf)."""
        angles = _phases(math.acos(min(max(pf, -1.0), 1.0)) for pf in self.power_factor)
        a, b, c = _phasors(self.current_a, angles)
        return abs(a + b + c)

    @property
    def average_voltage_v(self) -> float:
        return sum(self.voltage_v) / 3.0

    @property
    def average_current_a(self) -> float:
        return sum(self.current_a) / 3.0


def _phasors(
    magnitudes: Phases, lag_rad: Phases
) -> tuple[complex, complex, complex]:
    base = (0.0, -2.0 * math.pi / 3.0, 2.0 * math.pi / 3.0)
    a, b, c = (
        cmath.rect(m, b - lag) for m, b, lag in zip(magnitudes, base, lag_rad, strict=True)
    )
    return (a, b, c)


def initial_state() -> MeterState:
    """A meter that has been in service a while (counters far from zero)."""
    return MeterState(
        sim_time_s=0.0,
        voltage_v=(NOMINAL_V, NOMINAL_V + 1.0, NOMINAL_V - 1.0),
        current_a=_phases(18.0 * k for k in PHASE_IMBALANCE),
        power_factor=(0.88, 0.88, 0.88),
        frequency_hz=NOMINAL_HZ,
        import_energy_wh=48_213_750.0,
        export_energy_wh=1_250.0,
        import_reactive_varh=21_104_300.0,
        export_reactive_varh=310.0,
    )


def load_current_a(t_s: float, params: MeterParams) -> float:
    """The load profile's mean phase current at simulated time `t_s` (no noise)."""
    cycle = math.sin(2.0 * math.pi * t_s / params.cycle_period_s)
    return params.base_current_a + params.cycle_current_a * cycle


def power_factor_at(current_a: float, params: MeterParams) -> float:
    """0.70 at no load rising to 0.95 at the profile's peak current."""
    peak = params.base_current_a + params.cycle_current_a
    load = min(max(current_a / peak, 0.0), 1.0)
    return 0.70 + 0.25 * load


def _clamp(value: float, centre: float, spread: float) -> float:
    return min(max(value, centre - spread), centre + spread)


def step(state: MeterState, dt_s: float, rng: random.Random, params: MeterParams) -> MeterState:
    """Advance by `dt_s` simulated seconds (≤ MAX_STEP_S): energies integrate the old powers."""
    p_w = state.total_active_power_w
    q_var = state.total_reactive_power_var
    t = state.sim_time_s + dt_s
    keep = math.exp(-params.voltage_reversion_per_s * dt_s)
    noise_v = params.voltage_spread_v * math.sqrt(max(1.0 - keep * keep, 0.0))
    voltages = _phases(
        _clamp(NOMINAL_V + (v - NOMINAL_V) * keep + rng.gauss(0.0, noise_v), NOMINAL_V, 10.0)
        for v in state.voltage_v
    )
    mean_a = load_current_a(t, params)
    currents = _phases(
        max(mean_a * k + rng.gauss(0.0, params.current_noise_a), 0.0) for k in PHASE_IMBALANCE
    )
    pfs = _phases(power_factor_at(i, params) for i in currents)
    noise_hz = params.frequency_spread_hz * math.sqrt(max(1.0 - keep * keep, 0.0))
    frequency = _clamp(
        NOMINAL_HZ + (state.frequency_hz - NOMINAL_HZ) * keep + rng.gauss(0.0, noise_hz),
        NOMINAL_HZ,
        0.15,
    )
    return replace(
        state,
        sim_time_s=t,
        voltage_v=voltages,
        current_a=currents,
        power_factor=pfs,
        frequency_hz=frequency,
        import_energy_wh=state.import_energy_wh + max(p_w, 0.0) * dt_s / 3600.0,
        export_energy_wh=state.export_energy_wh + max(-p_w, 0.0) * dt_s / 3600.0,
        import_reactive_varh=state.import_reactive_varh + max(q_var, 0.0) * dt_s / 3600.0,
    )


@dataclass
class Meter:
    """The live meter: a seeded random generator and the current state."""

    seed: int = 1
    params: MeterParams = field(default_factory=MeterParams)
    state: MeterState = field(default_factory=initial_state)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def advance(self, dt_s: float) -> None:
        while dt_s > 0.0:
            chunk = min(dt_s, MAX_STEP_S)
            self.state = step(self.state, chunk, self._rng, self.params)
            dt_s -= chunk
