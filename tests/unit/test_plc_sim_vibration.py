"""The compressor's vibration waveform (`plc_sim.vibration`): its spectrum follows the machine's
state and the bearing wear, its RMS the scalar `vibration_mm_s`, and a seed fixes it.

The spectra here are numpy's FFT (Hann window, power corrected as `band_rms` does), not the
agent's kernel: the simulator is checked on its own.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from plc_sim.compressor import Compressor, CompressorState, MachineState
from plc_sim.compressor_modbus import WAVEFORM, served_compressor
from plc_sim.faults import Fault
from plc_sim.vibration import (
    BLOCK_SAMPLES,
    SAMPLE_RATE_HZ,
    LiveWaveform,
    bpfo_hz,
    shaft_hz,
    vibration_waveform_mm_s,
)

STEP_S = 0.5
"""A capture is 0.5 s of machine time: one per step, side by side."""
ONSET_S, RAMP_S = 100.0, 60.0


def run(seed: int = 3, fault: Fault | None = None,
        sim_s: float = 300.0) -> list[tuple[CompressorState, np.ndarray]]:
    """(state, capture) after each step of a fresh compressor."""
    compressor = Compressor(seed=seed, fault=fault)
    wave = LiveWaveform(compressor)
    out = []
    for _ in range(round(sim_s / STEP_S)):
        compressor.advance(STEP_S)
        out.append((compressor.state, wave().copy()))
    return out


def band_rms(capture: np.ndarray, low_hz: float, high_hz: float) -> float:
    """RMS of the capture in [low_hz, high_hz): Hann window, mean removed, Parseval with the
    window's power correction (Heinzel et al. 2002), as the agent's `band_rms` computes it."""
    w = np.hanning(len(capture) + 1)[:-1]  # the periodic Hann window
    power = np.abs(np.fft.rfft((capture - capture.mean()) * w)) ** 2
    freqs = np.fft.rfftfreq(len(capture), 1.0 / SAMPLE_RATE_HZ)
    inside = (freqs >= low_hz) & (freqs < high_hz)
    return math.sqrt(2.0 * power[inside].sum() / (len(capture) * np.sum(w * w)))


def peak_hz(capture: np.ndarray) -> float:
    w = np.hanning(len(capture) + 1)[:-1]
    power = np.abs(np.fft.rfft((capture - capture.mean()) * w))
    return float(np.fft.rfftfreq(len(capture), 1.0 / SAMPLE_RATE_HZ)[np.argmax(power)])


def rms(capture: np.ndarray) -> float:
    return float(np.sqrt(np.mean(capture * capture)))


RESOLUTION_HZ = SAMPLE_RATE_HZ / BLOCK_SAMPLES


def test_a_capture_is_a_block_of_the_documented_length_served_as_a_reading() -> None:
    arrays = served_compressor(Compressor(seed=1)).arrays()
    assert list(arrays) == [WAVEFORM]
    assert len(arrays[WAVEFORM]) == BLOCK_SAMPLES == 1024 and SAMPLE_RATE_HZ == 2048.0
    assert all(isinstance(v, float) for v in arrays[WAVEFORM])


def test_the_bearing_tone_grows_with_the_wear_at_the_outer_race_defect_frequency() -> None:
    steps = run(fault=Fault("bearing-wear", onset_s=ONSET_S, ramp_s=RAMP_S))
    running = [(s, c) for s, c in steps if s.machine_state is MachineState.RUNNING]
    bpfo = bpfo_hz(MachineState.RUNNING)
    assert 170.0 < bpfo < 180.0 and bpfo / shaft_hz(MachineState.RUNNING) == pytest.approx(3.585,
                                                                                          abs=1e-3)

    def bearing(c: np.ndarray) -> float:
        return band_rms(c, 160.0, 200.0)

    healthy = [bearing(c) for s, c in running if s.fault_severity == 0.0]
    early = [bearing(c) for s, c in running if 0.0 < s.fault_severity <= 0.1]
    worn = [bearing(c) for s, c in running if s.fault_severity >= 1.0]
    assert healthy and early and worn
    # Healthy: only the noise's share of the band (0.3 mm/s x sqrt(40 / 1024) = 0.06).
    assert max(healthy) < 0.1
    assert min(early) > 3 * max(healthy)
    assert min(worn) > 7.0  # sqrt(8.2^2 - 2.2^2) = 7.9 mm/s at full wear
    # Healthy, the 1x line is the spectrum's peak; worn, the defect's line is.
    assert all(abs(peak_hz(c) - shaft_hz(MachineState.RUNNING)) <= RESOLUTION_HZ
               for s, c in running if s.fault_severity == 0.0)
    assert all(abs(peak_hz(c) - bpfo) <= RESOLUTION_HZ
               for s, c in running if s.fault_severity >= 1.0)
    # The 1x band does not move with the wear: the defect is in its own band.
    assert np.mean([band_rms(c, 40.0, 60.0) for s, c in running if s.fault_severity >= 1.0]) == \
        pytest.approx(np.mean([band_rms(c, 40.0, 60.0) for s, c in running
                               if s.fault_severity == 0.0]), rel=0.05)


def test_the_running_speed_line_is_zero_off_and_smaller_idle_than_loaded() -> None:
    steps = run(sim_s=200.0)
    by_state = {state: [band_rms(c, 40.0, 60.0) for s, c in steps if s.machine_state is state]
                for state in MachineState}
    assert all(by_state.values()), "every state is visited"
    assert max(by_state[MachineState.OFF]) < 0.05  # only the sensor's floor
    assert np.mean(by_state[MachineState.IDLE]) == pytest.approx(1.16, rel=0.05)
    assert np.mean(by_state[MachineState.RUNNING]) == pytest.approx(2.18, rel=0.05)
    assert all(rms(c) < 0.1 for s, c in steps if s.machine_state is MachineState.OFF)
    # Less load, less slip: the idle shaft turns a little faster.
    assert shaft_hz(MachineState.IDLE) > shaft_hz(MachineState.RUNNING) > 48.0
    assert shaft_hz(MachineState.OFF) == 0.0


def test_the_waveform_rms_follows_the_scalar_vibration() -> None:
    steps = run(fault=Fault("bearing-wear", onset_s=ONSET_S, ramp_s=RAMP_S), sim_s=400.0)
    for state, capture in steps:
        # The scalar has 0.08 mm/s of reading noise, the capture the scatter of its own.
        assert rms(capture) == pytest.approx(state.vibration_mm_s, abs=0.3 + 0.02 *
                                             state.vibration_mm_s)
    worn = [(s, c) for s, c in steps if s.fault_severity >= 1.0
            and s.machine_state is MachineState.RUNNING]
    assert np.mean([rms(c) for _, c in worn]) == pytest.approx(8.2, rel=0.02)


def test_a_seed_fixes_the_waveform_and_reading_it_changes_nothing() -> None:
    fault = Fault("bearing-wear", onset_s=20.0, ramp_s=10.0)
    one = run(seed=7, fault=fault, sim_s=60.0)
    again = run(seed=7, fault=fault, sim_s=60.0)
    other = run(seed=8, fault=fault, sim_s=60.0)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(one, again, strict=True))
    assert not any(np.array_equal(a, b) for (_, a), (_, b) in zip(one, other, strict=True))
    # A pure function of (seed, state): the scalar model is not disturbed by the reads.
    unread = Compressor(seed=7, fault=fault)
    for _ in range(round(60.0 / STEP_S)):
        unread.advance(STEP_S)
    assert unread.state == one[-1][0]
    assert np.array_equal(vibration_waveform_mm_s(unread.state, unread.params, 7), one[-1][1])


def test_the_example_configs_bands_hold_the_simulators_lines_with_a_margin() -> None:
    """config/compressor-vibration.yaml watches this waveform: its bands must hold the 1x and
    BPFO lines of both motor-on states, three bins or more inside an edge (the Hann window's
    leakage stays in), at the simulator's rate and block length."""
    from pathlib import Path

    from agent.config import load_config
    from agent.config.detection import BandRmsRule

    root = Path(__file__).resolve().parents[2]
    [rule] = load_config(root / "config" / "compressor-vibration.yaml", environ={}).config.detectors
    assert isinstance(rule, BandRmsRule)
    assert (rule.sample_rate_hz, rule.fft_samples) == (SAMPLE_RATE_HZ, BLOCK_SAMPLES)
    bands = {band.name: band for band in rule.bands}
    margin = 3 * RESOLUTION_HZ
    for state in (MachineState.IDLE, MachineState.RUNNING):
        for name, line in (("running-speed", shaft_hz(state)), ("bearing-bpfo", bpfo_hz(state))):
            assert bands[name].low_hz + margin <= line <= bands[name].high_hz - margin, (name, state)
