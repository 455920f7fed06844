"""Faults injected into the compressor model, with their ground truth.

A fault starts at a simulated time (`onset_s`) and grows linearly to full severity over
`ramp_s` (wear and fouling develop; a stuck sensor or an idling machine is simply on).
The model asks `effects(fault, sim_time_s)` at every step, so it always knows whether a
fault is active: the `--trace` file carries it as the ground-truth label (`fault`,
`fault_severity`) that the end-to-end tests compare the agent's reports with.

What each fault shows in (the signals a detector can see):

| fault | signals |
|---|---|
| bearing-wear | vibration RMS rises (up to +6 mm/s), current and power rise (up to +8 %); the vibration waveform gains a tone at the bearing's outer-race defect frequency (`plc_sim.vibration`) |
| overheating | discharge temperature target rises (up to +25 °C): a fouled cooler |
| clogged-filter | air flow falls (up to -50 %) while the pressure rises as before: they disagree |
| stuck-sensor | the pressure reading freezes at its value at the onset; the machine goes on |
| left-idling | no plant demand (only leakage) and the controller never switches off: hours of idle power |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

FaultKind = Literal["bearing-wear", "overheating", "clogged-filter", "stuck-sensor", "left-idling"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    onset_s: float = 120.0
    """Simulated seconds of fault-free operation before the fault begins."""
    ramp_s: float = 60.0
    """Simulated seconds from onset to full severity (0: at once)."""

    def severity(self, sim_time_s: float) -> float:
        """0 before the onset, rising linearly to 1 over the ramp."""
        if sim_time_s < self.onset_s:
            return 0.0
        if self.ramp_s <= 0.0:
            return 1.0
        return min(1.0, (sim_time_s - self.onset_s) / self.ramp_s)


@dataclass(frozen=True, slots=True)
class Effects:
    """How the active fault changes the model during one step (the identity when none is)."""

    power_factor: float = 1.0
    vibration_add_mm_s: float = 0.0
    temperature_add_c: float = 0.0
    flow_factor: float = 1.0
    pressure_sensor_stuck: bool = False
    never_switch_off: bool = False
    demand_bar_per_s: float | None = None
    """Overrides the plant's air demand (None: the usual random walk)."""


NO_EFFECTS = Effects()

LEAKAGE_BAR_PER_S = 0.002
"""Pressure fall with no demand at all: the plant's leaks (left-idling)."""


def effects(fault: Fault | None, sim_time_s: float) -> tuple[float, Effects]:
    """(severity, effects) of `fault` at `sim_time_s`."""
    if fault is None:
        return 0.0, NO_EFFECTS
    s = fault.severity(sim_time_s)
    if s <= 0.0:
        return 0.0, NO_EFFECTS
    if fault.kind == "bearing-wear":
        return s, Effects(power_factor=1.0 + 0.08 * s, vibration_add_mm_s=6.0 * s)
    if fault.kind == "overheating":
        return s, Effects(temperature_add_c=25.0 * s)
    if fault.kind == "clogged-filter":
        return s, Effects(flow_factor=1.0 - 0.5 * s)
    if fault.kind == "stuck-sensor":
        return s, Effects(pressure_sensor_stuck=True)
    return s, Effects(never_switch_off=True, demand_bar_per_s=LEAKAGE_BAR_PER_S)
