"""The machine kernel: state, energy, usage and peak demand of every machine of a device,
one call per poll batch.

One row per machine (see the column constants): `params` its configuration; `ms` (float64)
and `mt` (int64) the state in force, the pending candidate and its dwell's energy and time,
the last signal sample, the open demand window; `counters` rows 2m and 2m+1 machine m's
meter and cycle counters (`kernels.counter`); `acc` (machines, PERIODS, A_FIELDS) energy
and time per state, starts, cycles, resets, unmeasured time and peak demand for the report
interval (0), the shift (1) and the lifetime (2, never reset). Durations use the batch's
monotonic clock, the time of a state change or a peak its UTC time.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.detect.kernels.counter import COUNTER_FIELDS, counter_step
from agent.detect.kernels.jit import njit
from agent.detect.kernels.state import OFF, UNKNOWN, desired_level

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# params columns. P_THRESHOLDS..+2: entry thresholds of idle, running, overload.
P_THRESHOLDS, P_HYSTERESIS, P_DWELL_NS, P_W_PER_UNIT, P_USE_METER, P_METER_KWH = 0, 3, 4, 5, 6, 7
P_METER_MODULUS, P_CYCLE_MODULUS, P_MAX_GAP_NS, P_DEMAND_NS = 8, 9, 10, 11
P_FIELDS = 12
"""P_W_PER_UNIT: watts per unit of the signal (1 for a power tag; sqrt(3)*U*pf for a
current tag with a line voltage; NaN: no power from the signal). P_USE_METER: 1 when the
energy comes from the meter counter (P_METER_KWH kWh per counter unit)."""

(MS_STATE, MS_CANDIDATE, MS_HAS_SIGNAL, MS_LAST_SIGNAL, MS_RUN, MS_DEMAND_KWH, MS_DEMAND_S,
 MS_PENDING_KWH, MS_PENDING_S) = range(9)
MS_FIELDS = 9
"""MS_RUN: -1 no run signal seen, 0 not running, 1 running. MS_PENDING_KWH and MS_PENDING_S:
energy and time not yet given to a state: meter energy while the state is unknown (after a
start), then the first state's; a candidate's dwell, then the candidate's if confirmed, else
the state in force's (`_dwelling`)."""

MT_STATE_MONO, MT_CANDIDATE_MONO, MT_CANDIDATE_NS, MT_LAST_MONO, MT_DEMAND_MONO = range(5)
MT_PEAK_NS = 5
"""MT_PEAK_NS + period: UTC time of each period's peak demand."""
PERIODS = 3
MT_FIELDS = MT_PEAK_NS + PERIODS

INTERVAL, SHIFT, LIFETIME = range(PERIODS)

A_KWH, A_SECONDS = 0, 4
"""A_KWH + state and A_SECONDS + state for off, idle, running, overload."""
A_STARTS, A_CYCLES, A_RESETS, A_UNMEASURED_S, A_PEAK_W = 8, 9, 10, 11, 12
A_FIELDS = 13

# Roles of a batch entry for the kernel.
ROLE_NONE, ROLE_SIGNAL, ROLE_RUN, ROLE_METER, ROLE_CYCLES = range(5)  # ordered: see the kernel

TRANSITION_FIELDS = 5
"""Columns of the kernel's output rows: machine, from, to, at (UTC ns), dwell of `from` (ns, -1
when unknown)."""


@njit(cache=True)
def _add(acc: F64, m: int, column: int, amount: float) -> None:
    for p in range(PERIODS):
        acc[m, p, column] += amount


@njit(cache=True)
def _dwelling(ms: F64, m: int) -> bool:
    """Whether what is measured now waits for a state: unknown, or a candidate dwells."""
    state = int(ms[m, MS_STATE])
    return state == UNKNOWN or int(ms[m, MS_CANDIDATE]) != state


@njit(cache=True)
def _credit_pending(ms: F64, acc: F64, m: int, state: int) -> None:
    _add(acc, m, A_KWH + state, ms[m, MS_PENDING_KWH])
    _add(acc, m, A_SECONDS + state, ms[m, MS_PENDING_S])
    ms[m, MS_PENDING_KWH] = 0.0
    ms[m, MS_PENDING_S] = 0.0


@njit(cache=True)
def _close_demand_window(params: F64, ms: F64, mt: I64, acc: F64, m: int,
                         mono_ns: int, time_ns: int) -> None:
    window_s = params[m, P_DEMAND_NS] / 1e9
    measured_s = ms[m, MS_DEMAND_S]
    has_energy = params[m, P_USE_METER] != 0.0 or not np.isnan(params[m, P_W_PER_UNIT])
    if has_energy and measured_s >= window_s / 2.0:
        demand_w = ms[m, MS_DEMAND_KWH] * 3.6e6 / measured_s
        for p in range(PERIODS):
            if demand_w > acc[m, p, A_PEAK_W]:
                acc[m, p, A_PEAK_W] = demand_w
                mt[m, MT_PEAK_NS + p] = time_ns
    ms[m, MS_DEMAND_KWH] = 0.0
    ms[m, MS_DEMAND_S] = 0.0
    mt[m, MT_DEMAND_MONO] = mono_ns


@njit(cache=True)
def machine_accumulate(
    params: F64, ms: F64, mt: I64, counters: F64, acc: F64,
    role: I64, machine: I64, values: F64, quality: npt.NDArray[np.uint8],
    mono_ns: int, time_ns: int, out: I64,
) -> int:
    """Fold one batch into every machine's state and accumulators; returns how many state changes
    it wrote to `out` (at most one per sample). Energy: the trapezoidal rule on the power
    (Press et al., Numerical Recipes, 4.1) or the meter's increase; a gap over P_MAX_GAP_NS is
    unmeasured. A dwell's energy and time go to the state its end decides."""
    # Counters and the run signal first: their increase since the last read happened in
    # the state in force before this batch.
    for j in range(role.shape[0]):
        r = role[j]
        if r <= ROLE_SIGNAL or quality[j] != 0:  # ROLE_NONE or ROLE_SIGNAL
            continue
        m = machine[j]
        x = values[j]
        if r == ROLE_RUN:
            ms[m, MS_RUN] = 1.0 if x != 0.0 else 0.0
        elif r == ROLE_METER:
            increase, reset = counter_step(counters, 2 * m, x, params[m, P_METER_MODULUS])
            if reset:
                _add(acc, m, A_RESETS, 1.0)
            kwh = increase * params[m, P_METER_KWH]
            if params[m, P_USE_METER] == 0.0:
                pass
            elif _dwelling(ms, m):
                ms[m, MS_PENDING_KWH] += kwh
                if int(ms[m, MS_STATE]) != UNKNOWN:
                    ms[m, MS_DEMAND_KWH] += kwh
            else:
                _add(acc, m, A_KWH + int(ms[m, MS_STATE]), kwh)
                ms[m, MS_DEMAND_KWH] += kwh
        elif r == ROLE_CYCLES:
            increase, reset = counter_step(counters, 2 * m + 1, x, params[m, P_CYCLE_MODULUS])
            if reset:
                _add(acc, m, A_RESETS, 1.0)
            _add(acc, m, A_CYCLES, increase)

    transitions = 0
    for j in range(role.shape[0]):
        if role[j] != ROLE_SIGNAL or quality[j] != 0:
            continue
        m = machine[j]
        x = values[j]
        state = int(ms[m, MS_STATE])
        if ms[m, MS_HAS_SIGNAL] != 0.0:
            dt_ns = mono_ns - mt[m, MT_LAST_MONO]
            if dt_ns > 0:
                dt_s = dt_ns / 1e9
                if dt_ns <= params[m, P_MAX_GAP_NS]:
                    kwh = 0.0
                    w_per_unit = params[m, P_W_PER_UNIT]
                    if params[m, P_USE_METER] == 0.0 and not np.isnan(w_per_unit):
                        kwh = (ms[m, MS_LAST_SIGNAL] + x) / 2.0 * w_per_unit * dt_s / 3.6e6
                    if _dwelling(ms, m):
                        ms[m, MS_PENDING_S] += dt_s
                        ms[m, MS_PENDING_KWH] += kwh
                    else:
                        _add(acc, m, A_SECONDS + state, dt_s)
                        _add(acc, m, A_KWH + state, kwh)
                    ms[m, MS_DEMAND_S] += dt_s
                    ms[m, MS_DEMAND_KWH] += kwh
                else:
                    _add(acc, m, A_UNMEASURED_S, dt_s)
                if mono_ns - mt[m, MT_DEMAND_MONO] >= params[m, P_DEMAND_NS]:
                    _close_demand_window(params, ms, mt, acc, m, mono_ns, time_ns)
        else:
            mt[m, MT_DEMAND_MONO] = mono_ns
        ms[m, MS_HAS_SIGNAL] = 1.0
        ms[m, MS_LAST_SIGNAL] = x
        mt[m, MT_LAST_MONO] = mono_ns

        level = desired_level(x, state, params[m, P_THRESHOLDS:P_THRESHOLDS + 3],
                              params[m, P_HYSTERESIS])
        if ms[m, MS_RUN] == 0.0 and level > 1:
            level = 1  # the run signal says the machine is not producing: idle at most
        if state == UNKNOWN:
            # The first reading after a start: the state is what the signal says, at once.
            ms[m, MS_STATE] = level
            ms[m, MS_CANDIDATE] = level
            mt[m, MT_STATE_MONO] = mono_ns
            _credit_pending(ms, acc, m, level)
            out[transitions, 0] = m
            out[transitions, 1] = UNKNOWN
            out[transitions, 2] = level
            out[transitions, 3] = time_ns
            out[transitions, 4] = -1
            transitions += 1
            continue
        if level == state:
            if int(ms[m, MS_CANDIDATE]) != state:  # a dwell fell back: the state in force's
                _credit_pending(ms, acc, m, state)
                ms[m, MS_CANDIDATE] = state
            continue
        if level != int(ms[m, MS_CANDIDATE]):  # a new dwell; one for another level fell back
            _credit_pending(ms, acc, m, state)
            ms[m, MS_CANDIDATE] = level
            mt[m, MT_CANDIDATE_MONO] = mono_ns
            mt[m, MT_CANDIDATE_NS] = time_ns
        if mono_ns - mt[m, MT_CANDIDATE_MONO] >= params[m, P_DWELL_NS]:
            out[transitions, 0] = m
            out[transitions, 1] = state
            out[transitions, 2] = level
            out[transitions, 3] = mt[m, MT_CANDIDATE_NS]
            out[transitions, 4] = mt[m, MT_CANDIDATE_MONO] - mt[m, MT_STATE_MONO]
            transitions += 1
            if state == OFF:
                _add(acc, m, A_STARTS, 1.0)
            _credit_pending(ms, acc, m, level)
            ms[m, MS_STATE] = level
            mt[m, MT_STATE_MONO] = mt[m, MT_CANDIDATE_MONO]
    return transitions


@njit(cache=True)
def drop_candidates(ms: F64, acc: F64) -> None:
    """End every dwell unconfirmed (at shutdown: no sample will confirm it): its energy and
    time go to the state in force, as a fall-back's would. Pending meter energy of a machine
    whose state is still unknown stays pending (there is no state to give it to)."""
    for m in range(ms.shape[0]):
        state = int(ms[m, MS_STATE])
        if state != UNKNOWN:
            _credit_pending(ms, acc, m, state)
            ms[m, MS_CANDIDATE] = state


def new_machine_state(machines: int) -> tuple[F64, I64, F64, F64]:
    """Fresh (ms, mt, counters, acc) arrays for `machines` machines: state unknown, no peak."""
    ms = np.zeros((machines, MS_FIELDS), dtype=np.float64)
    ms[:, MS_STATE] = UNKNOWN
    ms[:, MS_CANDIDATE] = UNKNOWN
    ms[:, MS_RUN] = -1.0
    mt = np.zeros((machines, MT_FIELDS), dtype=np.int64)
    counters = np.zeros((2 * machines, COUNTER_FIELDS), dtype=np.float64)
    acc = np.zeros((machines, PERIODS, A_FIELDS), dtype=np.float64)
    acc[:, :, A_PEAK_W] = -1.0
    return ms, mt, counters, acc


def warm_up_machine() -> None:
    """Compile (or load from the cache) the machine kernel on a tiny batch."""
    params = np.zeros((1, P_FIELDS), dtype=np.float64)
    params[0, P_W_PER_UNIT] = 1.0
    ms, mt, counters, acc = new_machine_state(1)
    out = np.zeros((2, TRANSITION_FIELDS), dtype=np.int64)
    machine_accumulate(params, ms, mt, counters, acc,
                       np.array([ROLE_METER, ROLE_SIGNAL], dtype=np.int64),
                       np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.float64),
                       np.zeros(2, dtype=np.uint8), 0, 0, out)
    drop_candidates(ms, acc)
