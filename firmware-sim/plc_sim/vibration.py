"""The compressor's vibration as a waveform: what a vibration transmitter's capture holds.

Why: the scalar `vibration_mm_s` is a level, and a level cannot show *where* in the spectrum
the vibration is. The agent's `band_rms` detector reads a fast signal in frequency bands, so
the simulator serves one: the velocity at the motor's drive-end bearing, as an
accelerometer integrated to velocity by its transmitter delivers it (mm/s, the unit of ISO
10816 severity), sampled at `SAMPLE_RATE_HZ` = 2,048 Hz (the 10-1,000 Hz band of ISO 10816
lies below the 1,024 Hz Nyquist frequency), in captures of `BLOCK_SAMPLES` = 1,024 (0.5 s,
2 Hz resolution). Each tick serves the capture of the last 0.5 s of machine time, with the
machine in the tick's state throughout (the state holds over a model step; a block is
never longer than one at the demo's speeds).

What a capture holds, each term for a reason a vibration analyst would recognise:

* **1x running speed** (residual unbalance): a sine at the shaft frequency. The motor is a
  2-pole induction motor on 50 Hz (3,000 rpm synchronous) whose slip grows with its load:
  `LOADED_RPM` 2,930 loaded, `UNLOADED_RPM` 2,980 unloaded (idle); the shaft stands still
  when off.
* **Broadband noise** (the air end, the air flow, the sensor): white, `NOISE_ON_MM_S` with
  the motor on; the sensor's floor (the model's `vibration_off_mm_s`) when off.
* **Bearing defect** (the `bearing-wear` fault): a sine at the ball-pass frequency of the
  outer race, BPFO = (n/2)(1 - d/D cos phi) x shaft speed, for a deep-groove ball bearing of
  n = 9 balls of d = 7.94 mm on a pitch circle of D = 39.04 mm, phi = 0 (the SKF 6205 of the
  Case Western Reserve University bearing data set): 3.585 x shaft speed, 175 Hz loaded.
  A real outer-race defect rings as impacts at BPFO and its harmonics; one sine is the
  simplest spectrum that puts the defect's energy where a band around BPFO looks for it.

Amplitudes: the capture's RMS is the scalar's noiseless level, `vibration_level_mm_s(state)
+ state.bearing_defect_mm_s` (the scalar adds only its reading noise): 1x and noise share
the state's level (1x RMS = sqrt(level^2 - noise^2)), and the defect tone's RMS t is what
brings the total to level + defect: t = sqrt((level + defect)^2 - level^2). For a small
defect t ~ sqrt(2 level defect): at 1 % of the fault's +6 mm/s the tone is 0.52 mm/s RMS
while the overall RMS rose by 0.06 mm/s (within the scalar's 0.08 mm/s reading noise), and
the noise in a 40 Hz band around BPFO is 0.06 mm/s. An early defect is plain in its band
long before it moves the overall level: what band analysis is for.

Deterministic: a capture is a pure function of (seed, state). Its noise comes from a
generator seeded with the seed and the index of the capture's last sample, and its sines'
phases from the machine time, so reading it twice, or not at all, changes nothing (the
model's own `random.Random` is not touched: the scalar readings stay as they were).
Cost: two sines and one normal draw of 1,024 samples, tens of microseconds per capture.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from plc_sim.compressor import (
    Compressor,
    CompressorParams,
    CompressorState,
    MachineState,
    vibration_level_mm_s,
)

F64 = npt.NDArray[np.float64]

SAMPLE_RATE_HZ = 2048.0
"""Samples per second of machine time."""
BLOCK_SAMPLES = 1024
"""Samples per capture (a power of two: one FFT block of the agent's `band_rms`)."""
LOADED_RPM = 2930.0
"""Shaft speed loaded (running): the rated slip of a 7.5 kW 2-pole motor, about 2.3 %."""
UNLOADED_RPM = 2980.0
"""Shaft speed unloaded (idle): less load, less slip."""
NOISE_ON_MM_S = 0.3
"""RMS of the broadband noise with the motor on (0 to the Nyquist frequency)."""
BALLS = 9
BALL_DIAMETER_MM = 7.94
PITCH_DIAMETER_MM = 39.04
BPFO_PER_REV = BALLS / 2.0 * (1.0 - BALL_DIAMETER_MM / PITCH_DIAMETER_MM)
"""Outer-race defect impacts per shaft revolution (contact angle 0): 3.585."""


def shaft_hz(machine_state: MachineState) -> float:
    """The motor's rotation frequency in a state (0 when off)."""
    if machine_state is MachineState.RUNNING:
        return LOADED_RPM / 60.0
    if machine_state is MachineState.IDLE:
        return UNLOADED_RPM / 60.0
    return 0.0


def bpfo_hz(machine_state: MachineState) -> float:
    """The outer-race defect frequency in a state: BPFO_PER_REV x shaft speed."""
    return BPFO_PER_REV * shaft_hz(machine_state)


def components_mm_s(state: CompressorState, params: CompressorParams) -> tuple[float, float, float]:
    """RMS of (1x, noise, defect tone) in the state, in mm/s (see the module docstring)."""
    level = vibration_level_mm_s(state.machine_state, params)
    if state.machine_state is MachineState.OFF:
        return 0.0, level, 0.0
    noise = min(NOISE_ON_MM_S, level)
    one_x = math.sqrt(level * level - noise * noise)
    total = level + state.bearing_defect_mm_s
    return one_x, noise, math.sqrt(total * total - level * level)


def vibration_waveform_mm_s(state: CompressorState, params: CompressorParams, seed: int) -> F64:
    """The capture of the last BLOCK_SAMPLES / SAMPLE_RATE_HZ seconds before `state`'s time:
    velocity in mm/s, oldest sample first."""
    last = round(state.sim_time_s * SAMPLE_RATE_HZ)
    t = (np.arange(last - BLOCK_SAMPLES + 1, last + 1, dtype=np.float64)) / SAMPLE_RATE_HZ
    one_x, noise, tone = components_mm_s(state, params)
    rng = np.random.default_rng([seed % 2**63, last % 2**63])
    wave = rng.standard_normal(BLOCK_SAMPLES) * noise
    if one_x > 0.0:
        wave += math.sqrt(2.0) * one_x * np.sin(2.0 * np.pi * shaft_hz(state.machine_state) * t)
    if tone > 0.0:
        # A phase of its own (0.7 rad), so the two sines never start together.
        wave += math.sqrt(2.0) * tone * np.sin(
            2.0 * np.pi * bpfo_hz(state.machine_state) * t + 0.7)
    return wave


class LiveWaveform:
    """The capture of a live compressor's present state, computed once per state: the OPC UA
    server asks every tick, the model may not have moved since."""

    def __init__(self, compressor: Compressor) -> None:
        self._compressor = compressor
        self._state: CompressorState | None = None
        self._wave: F64 = np.zeros(BLOCK_SAMPLES)

    def __call__(self) -> F64:
        state = self._compressor.state
        if state is not self._state:
            self._wave = vibration_waveform_mm_s(state, self._compressor.params,
                                                 self._compressor.seed)
            self._state = state
        return self._wave
