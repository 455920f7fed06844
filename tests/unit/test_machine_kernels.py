"""The counter, state and machine kernels on hand-made batches: rollover, reset, hysteresis,
dwell, exact integration and gaps. tests/integration/test_kernel_forms.py runs them in every form."""

from __future__ import annotations

import numpy as np
import pytest

from agent.detect.kernels.counter import COUNTER_FIELDS, counter_step
from agent.detect.kernels.machine import (
    A_KWH,
    A_PEAK_W,
    A_RESETS,
    A_SECONDS,
    A_STARTS,
    A_UNMEASURED_S,
    INTERVAL,
    LIFETIME,
    P_DEMAND_NS,
    P_DWELL_NS,
    P_FIELDS,
    P_HYSTERESIS,
    P_MAX_GAP_NS,
    P_METER_KWH,
    P_METER_MODULUS,
    P_THRESHOLDS,
    P_USE_METER,
    P_W_PER_UNIT,
    ROLE_METER,
    ROLE_SIGNAL,
    TRANSITION_FIELDS,
    machine_accumulate,
    new_machine_state,
)
from agent.detect.kernels.state import IDLE, OFF, OVERLOAD, RUNNING, UNKNOWN, desired_level

S = 1_000_000_000
T0 = 1_700_000_000 * S


def step(counter: np.ndarray, x: float, modulus: float = 0.0) -> tuple[float, bool]:
    increase, reset = counter_step(counter, 0, x, modulus)
    return float(increase), bool(reset)


def test_counter_rise_rollover_and_reset() -> None:
    c = np.zeros((1, COUNTER_FIELDS))
    assert step(c, 65530.0, 65536.0) == (0.0, False), "the first reading is the baseline"
    assert step(c, 65534.0, 65536.0) == (4.0, False)
    assert step(c, 3.0, 65536.0) == (5.0, False), "wrap: 65534 -> 65535 -> 0 -> 3"
    assert step(c, 1.0, 65536.0) == (1.0, True), "a drop that cannot be a wrap is a reset"
    assert step(c, 1.0, 65536.0) == (0.0, False)


def test_counter_without_modulus_treats_every_drop_as_reset() -> None:
    c = np.zeros((1, COUNTER_FIELDS))
    step(c, 1000.5)
    assert step(c, 0.25) == (0.25, True), "float counter: the new value is the increase since reset"


def test_counter_big_drop_is_a_reset_even_with_modulus() -> None:
    c = np.zeros((1, COUNTER_FIELDS))
    step(c, 20000.0, 65536.0)
    assert step(c, 10.0, 65536.0) == (10.0, True), "20000 -> 10 would be a 45546 wrap: more than half the range"


THRESHOLDS = np.array([100.0, 1000.0, 5000.0])


@pytest.mark.parametrize(("x", "current", "expected"), [
    (50.0, UNKNOWN, OFF), (150.0, UNKNOWN, IDLE), (2000.0, UNKNOWN, RUNNING),
    (6000.0, UNKNOWN, OVERLOAD),
    (950.0, RUNNING, RUNNING),  # within the hysteresis below the running threshold
    (899.0, RUNNING, IDLE),  # below threshold minus hysteresis
    (1050.0, IDLE, RUNNING), (30.0, RUNNING, OFF), (4950.0, OVERLOAD, OVERLOAD),
])
def test_levels_with_hysteresis(x: float, current: int, expected: int) -> None:
    assert desired_level(x, current, THRESHOLDS, 50.0) == expected


def params(*, dwell_s: float = 0.0, gap_s: float = 10.0, meter: bool = False,
           demand_s: float = 900.0) -> np.ndarray:
    p = np.zeros((1, P_FIELDS))
    p[0, P_THRESHOLDS:P_THRESHOLDS + 3] = THRESHOLDS
    p[0, P_HYSTERESIS] = 50.0
    p[0, P_DWELL_NS] = dwell_s * S
    p[0, P_W_PER_UNIT] = 1.0
    p[0, P_USE_METER] = 1.0 if meter else 0.0
    p[0, P_METER_KWH] = 0.001  # the meter counts Wh
    p[0, P_METER_MODULUS] = 2.0**32
    p[0, P_MAX_GAP_NS] = gap_s * S
    p[0, P_DEMAND_NS] = demand_s * S
    return p


class Machine:
    """One machine's kernel state, fed one power (and optionally meter) sample per call."""

    def __init__(self, p: np.ndarray) -> None:
        self.p = p
        self.ms, self.mt, self.counters, self.acc = new_machine_state(1)

    def feed(self, t_s: float, power_w: float, meter_wh: float | None = None,
             quality: int = 0) -> list[tuple[int, int, int, int, int]]:
        roles = [ROLE_SIGNAL] + ([ROLE_METER] if meter_wh is not None else [])
        values = [power_w] + ([meter_wh] if meter_wh is not None else [])
        out = np.zeros((len(roles), TRANSITION_FIELDS), dtype=np.int64)
        n = machine_accumulate(self.p, self.ms, self.mt, self.counters, self.acc,
                               np.array(roles, dtype=np.int64), np.zeros(len(roles), np.int64),
                               np.array(values, dtype=np.float64),
                               np.full(len(roles), quality, dtype=np.uint8),
                               int(t_s * S), T0 + int(t_s * S), out)
        return [tuple(int(v) for v in row) for row in out[:n]]  # type: ignore[misc]


def test_first_reading_sets_the_state_at_once() -> None:
    m = Machine(params(dwell_s=5))
    assert m.feed(0, 2000.0) == [(0, UNKNOWN, RUNNING, T0, -1)]


def test_a_change_needs_the_minimum_dwell_and_is_dated_when_it_began() -> None:
    m = Machine(params(dwell_s=5))
    m.feed(0, 2000.0)
    assert m.feed(10, 500.0) == []
    assert m.feed(12, 2000.0) == [], "a 2 s dip is not a state"
    assert m.feed(20, 500.0) == []
    assert m.feed(24, 500.0) == []
    [change] = m.feed(25, 500.0)
    assert change == (0, RUNNING, IDLE, T0 + 20 * S, 20 * S)


def test_starts_count_changes_out_of_off() -> None:
    m = Machine(params())
    for i, w in enumerate([0.0, 2000.0, 0.0, 2000.0, 20.0, 150.0]):
        m.feed(i, w)
    assert m.acc[0, LIFETIME, A_STARTS] == 3


def test_integration_is_exact_for_piecewise_linear_power() -> None:
    m = Machine(params())
    m.feed(0, 1500.0)
    m.feed(1, 3000.0)  # trapezoid: 2250 W for 1 s
    m.feed(3, 3000.0)  # 3000 W for 2 s
    assert m.acc[0, INTERVAL, A_KWH + RUNNING] == pytest.approx((2250 + 6000) / 3.6e6, rel=1e-12)
    assert m.acc[0, INTERVAL, A_SECONDS + RUNNING] == pytest.approx(3.0)


def test_a_gap_longer_than_the_bound_is_not_integrated() -> None:
    m = Machine(params(gap_s=10))
    m.feed(0, 2000.0)
    m.feed(1, 2000.0)
    m.feed(3601, 2000.0)  # the device was down for an hour
    m.feed(3602, 2000.0)
    assert m.acc[0, INTERVAL, A_KWH + RUNNING] == pytest.approx(2 * 2000 / 3.6e6)
    assert m.acc[0, INTERVAL, A_UNMEASURED_S] == pytest.approx(3600.0)
    assert m.acc[0, INTERVAL, A_SECONDS + RUNNING] == pytest.approx(2.0)


def test_bad_samples_are_skipped() -> None:
    m = Machine(params())
    m.feed(0, 2000.0)
    m.feed(1, 1e12, quality=2)
    m.feed(2, 2000.0)
    assert m.acc[0, INTERVAL, A_KWH + RUNNING] == pytest.approx(4000 / 3.6e6)


def test_meter_counter_energy_goes_to_the_state_in_force_across_rollover() -> None:
    m = Machine(params(meter=True))
    m.feed(0, 2000.0, meter_wh=2.0**32 - 1.0)
    m.feed(1, 2000.0, meter_wh=1.0)  # +2 Wh across the 32-bit wrap
    m.feed(2, 150.0, meter_wh=3.0)  # +2 Wh, still running (no dwell: idle from now on)
    m.feed(3, 150.0, meter_wh=4.0)
    assert m.acc[0, LIFETIME, A_KWH + RUNNING] == pytest.approx(0.004)
    assert m.acc[0, LIFETIME, A_KWH + IDLE] == pytest.approx(0.001)
    assert m.acc[0, LIFETIME, A_RESETS] == 0
    m.feed(4, 150.0, meter_wh=0.5)  # meter replaced
    assert m.acc[0, LIFETIME, A_RESETS] == 1
    assert m.acc[0, LIFETIME, A_KWH + IDLE] == pytest.approx(0.0015)


def test_peak_demand_is_the_highest_window_mean() -> None:
    m = Machine(params(demand_s=10))
    for t in range(31):
        m.feed(t, 6000.0 if 10 <= t < 20 else 1000.0)
    # Windows end at 10, 20, 30 s; the second holds 9 s at 6000 W and the ramp from 1000 W.
    expected_w = (0.5 * (1000 + 6000) + 9 * 6000) / 10
    assert m.acc[0, INTERVAL, A_PEAK_W] == pytest.approx(expected_w)
    assert m.mt[0, 5 + INTERVAL] == T0 + 20 * S
