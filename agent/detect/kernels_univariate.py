"""numba kernels of the univariate anomaly detectors: limits, z-score, drift, stuck, RMS.

Every kernel has the same shape: `params` (rows, P) holds each row's configuration, `state`
(rows, S) its statistics, `ep`/`times` its episode (`kernels_episode`), `ctx` (rows, C) the
ring of its last good samples for the events' context; `sel[j]` is the position in the
batch of the j-th sample to fold and `rows[j]` the row it feeds (a tag in two rules feeds
two rows). Samples whose quality is not GOOD (0) never enter the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import numpy.typing as npt

from agent.detect.jit import njit
from agent.detect.kernels_episode import (
    EP_SCORE,
    EP_STATE,
    IDLE,
    P_AFTER,
    P_CLEAR_NS,
    P_MIN_NS,
    episode_step,
    ring_slot,
)

__all__ = ["P_AFTER", "P_CLEAR_NS", "P_MIN_NS"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

COMMON_PARAMS = 3
"""Every params array starts with P_MIN_NS, P_CLEAR_NS and P_AFTER (`kernels_episode`)."""

# limits: level (low/high with hysteresis) or rate of change, one row each.
L_LOW, L_HIGH, L_HYST, L_MODE, L_MAX_RATE = range(3, 8)
LIMIT_PARAMS = 8
L_LEVEL, L_RATE = 0.0, 1.0
LS_N, LS_LAST, LS_LAST_MONO = range(3)
LIMIT_STATE = 3


@njit(cache=True)
def limits_batch(params: F64, state: F64, ep: F64, times: I64, ctx: F64, sel: I64, rows: I64,
                 values: F64, quality: U8, mono_ns: int, time_ns: int) -> None:
    """Level limits with hysteresis and a rate-of-change limit; the score is the excess over
    the limit in the tag's unit (per second for a rate), so the peak is the max excess.

    Reference: a two-threshold comparator (Schmitt trigger), as in IEC 62682 alarm deadbands.
    """
    size = ctx.shape[1]
    for j in range(sel.shape[0]):
        p = sel[j]
        if quality[p] != 0:
            continue
        row = rows[j]
        x = values[p]
        ctx[row, ring_slot(ep, row, size)] = x
        if params[row, L_MODE] == L_LEVEL:
            high = params[row, L_HIGH]
            low = params[row, L_LOW]
            excess = max(x - high, low - x)
            limit = high if x - high >= low - x else low
            if ep[row, EP_STATE] == IDLE and not (excess > 0.0):
                ep[row, EP_SCORE] = excess  # the common case, kept out of the call
            else:
                episode_step(ep, times, params, row, excess, limit, x, excess > 0.0,
                             excess < -params[row, L_HYST], mono_ns, time_ns)
        else:
            if state[row, LS_N] > 0.0 and mono_ns > state[row, LS_LAST_MONO]:
                dt = (mono_ns - state[row, LS_LAST_MONO]) * 1e-9
                excess = abs(x - state[row, LS_LAST]) / dt - params[row, L_MAX_RATE]
                if ep[row, EP_STATE] == IDLE and not (excess > 0.0):
                    ep[row, EP_SCORE] = excess  # the common case, kept out of the call
                else:
                    episode_step(ep, times, params, row, excess, params[row, L_MAX_RATE], x,
                                 excess > 0.0, excess <= 0.0, mono_ns, time_ns)
            state[row, LS_LAST_MONO] = mono_ns
        state[row, LS_N] += 1.0
        state[row, LS_LAST] = x


# z-score: smoothed value against an outlier-gated EWMA baseline.
Z_THRESHOLD, Z_CLEAR, Z_ALPHA_SMOOTH, Z_ALPHA_BASE, Z_WARMUP, Z_DIRECTION = range(3, 9)
ZSCORE_PARAMS = 9
ZS_N, ZS_SMOOTH, ZS_MEAN, ZS_VAR = range(4)
ZSCORE_STATE = 4


@njit(cache=True)
def zscore_batch(params: F64, state: F64, ep: F64, times: I64, ctx: F64, sel: I64, rows: I64,
                 values: F64, quality: U8, mono_ns: int, time_ns: int) -> None:
    """Streaming z-score of an EWMA-smoothed value against an EWMA mean and variance.

    Reference: J. M. Lucas and M. S. Saccucci, "Exponentially weighted moving average
    control schemes", Technometrics 32(1), 1990; made robust by gating: a sample over the
    threshold (or inside an episode) never updates the baseline, so an anomaly does not
    become the new normal. No score (NaN) during the first `warmup` samples.
    """
    size = ctx.shape[1]
    for j in range(sel.shape[0]):
        p = sel[j]
        if quality[p] != 0:
            continue
        row = rows[j]
        x = values[p]
        ctx[row, ring_slot(ep, row, size)] = x
        n = state[row, ZS_N] + 1.0
        state[row, ZS_N] = n
        if n == 1.0:
            state[row, ZS_SMOOTH] = x
            state[row, ZS_MEAN] = x
            state[row, ZS_VAR] = 0.0
        else:
            state[row, ZS_SMOOTH] += params[row, Z_ALPHA_SMOOTH] * (x - state[row, ZS_SMOOTH])
        s = state[row, ZS_SMOOTH]
        sd = math.sqrt(state[row, ZS_VAR])
        over = False
        if n > params[row, Z_WARMUP] and sd > 0.0:
            z = (s - state[row, ZS_MEAN]) / sd
            direction = params[row, Z_DIRECTION]
            score = abs(z) if direction == 0.0 else z * direction
            over = score > params[row, Z_THRESHOLD]
            if ep[row, EP_STATE] == IDLE and not over:
                ep[row, EP_SCORE] = score  # the common case, kept out of the call
            else:
                episode_step(ep, times, params, row, score, params[row, Z_THRESHOLD], x, over,
                             score < params[row, Z_CLEAR], mono_ns, time_ns)
        if ep[row, EP_STATE] == IDLE and not over:
            # During warm-up max(alpha, 1/n): the exact mean and variance of the warm-up
            # (an EWMA variance starting from 0 would inflate the first z-scores).
            a = params[row, Z_ALPHA_BASE]
            if n <= params[row, Z_WARMUP]:
                a = max(a, 1.0 / n)
            d = s - state[row, ZS_MEAN]
            state[row, ZS_MEAN] += a * d
            state[row, ZS_VAR] = (1.0 - a) * (state[row, ZS_VAR] + a * d * d)


# drift: two-sided CUSUM of the standardized value against the warm-up's mean and deviation.
D_WARMUP, D_SLACK, D_THRESHOLD, D_CLEAR = range(3, 7)
DRIFT_PARAMS = 7
DS_N, DS_MEAN, DS_M2, DS_POS, DS_NEG = range(5)
DRIFT_STATE = 5


@njit(cache=True)
def drift_batch(params: F64, state: F64, ep: F64, times: I64, ctx: F64, sel: I64, rows: I64,
                values: F64, quality: U8, mono_ns: int, time_ns: int) -> None:
    """Two-sided CUSUM in units of the warm-up's standard deviation; score = max(S+, S-).

    Reference: E. S. Page, "Continuous inspection schemes", Biometrika 41(1/2), 1954.
    The mean and deviation are learned (Welford) over the first `warmup` good samples.
    """
    size = ctx.shape[1]
    for j in range(sel.shape[0]):
        p = sel[j]
        if quality[p] != 0:
            continue
        row = rows[j]
        x = values[p]
        ctx[row, ring_slot(ep, row, size)] = x
        n = state[row, DS_N]
        if n < params[row, D_WARMUP]:
            n += 1.0
            state[row, DS_N] = n
            delta = x - state[row, DS_MEAN]
            state[row, DS_MEAN] += delta / n
            state[row, DS_M2] += delta * (x - state[row, DS_MEAN])
            continue
        sd = math.sqrt(state[row, DS_M2] / n) if n > 0.0 else 0.0
        if sd <= 0.0:
            sd = 1e-12 * max(1.0, abs(state[row, DS_MEAN]))
        z = (x - state[row, DS_MEAN]) / sd
        k = params[row, D_SLACK]
        state[row, DS_POS] = max(0.0, state[row, DS_POS] + z - k)
        state[row, DS_NEG] = max(0.0, state[row, DS_NEG] - z - k)
        score = max(state[row, DS_POS], state[row, DS_NEG])
        if ep[row, EP_STATE] == IDLE and not (score > params[row, D_THRESHOLD]):
            ep[row, EP_SCORE] = score  # the common case, kept out of the call
        else:
            episode_step(ep, times, params, row, score, params[row, D_THRESHOLD], x,
                         score > params[row, D_THRESHOLD], score < params[row, D_CLEAR], mono_ns,
                         time_ns)


# stuck: a flat-lined value (mode FLAT) or no good sample for a while (mode SILENT).
S_MODE, S_AFTER_NS, S_MIN_CHANGE = range(3, 6)
STUCK_PARAMS = 6
S_FLAT, S_SILENT = 0.0, 1.0
SS_N, SS_REF, SS_CHANGE_MONO, SS_GOOD_MONO = range(4)
STUCK_STATE = 4


@njit(cache=True)
def stuck_batch(params: F64, state: F64, ep: F64, times: I64, ctx: F64, sel: I64, rows: I64,
                values: F64, quality: U8, mono_ns: int, time_ns: int) -> None:
    """Seconds since the value last moved by more than `min_change` (FLAT rows), or since
    the last good sample (SILENT rows: a bad sample is no delivery). Score in seconds.

    Reference: flat-line and timeout checks of sensor validation, e.g. ISO 13374-2's
    data-acquisition quality checks.
    """
    size = ctx.shape[1]
    for j in range(sel.shape[0]):
        p = sel[j]
        row = rows[j]
        if state[row, SS_N] == 0.0:
            state[row, SS_GOOD_MONO] = mono_ns
            state[row, SS_CHANGE_MONO] = mono_ns
        good = quality[p] == 0
        x = values[p]
        if good:
            ctx[row, ring_slot(ep, row, size)] = x
            state[row, SS_GOOD_MONO] = mono_ns
        if params[row, S_MODE] == S_FLAT:
            if not good:
                continue
            if state[row, SS_N] == 0.0 or abs(x - state[row, SS_REF]) > params[row, S_MIN_CHANGE]:
                state[row, SS_REF] = x
                state[row, SS_CHANGE_MONO] = mono_ns
            state[row, SS_N] += 1.0
            flat_ns = mono_ns - state[row, SS_CHANGE_MONO]
        else:
            state[row, SS_N] += 1.0
            flat_ns = mono_ns - state[row, SS_GOOD_MONO]
        over = flat_ns >= params[row, S_AFTER_NS]
        if ep[row, EP_STATE] == IDLE and not over:
            ep[row, EP_SCORE] = flat_ns * 1e-9  # the common case, kept out of the call
        else:
            episode_step(ep, times, params, row, flat_ns * 1e-9,
                         params[row, S_AFTER_NS] * 1e-9, x, over, not over, mono_ns, time_ns)


@njit(cache=True)
def stuck_tick(params: F64, state: F64, ep: F64, times: I64, mono_ns: int, time_ns: int) -> None:
    """SILENT rows on the clock alone: a tag that stops arriving brings no batch to look at.
    A row that never delivered counts from its first tick."""
    for row in range(params.shape[0]):
        if params[row, S_MODE] != S_SILENT:
            continue
        if state[row, SS_GOOD_MONO] == 0.0:
            state[row, SS_GOOD_MONO] = mono_ns
            state[row, SS_N] = 1.0
        silent_ns = mono_ns - state[row, SS_GOOD_MONO]
        over = silent_ns >= params[row, S_AFTER_NS]
        if ep[row, EP_STATE] == IDLE and not over:
            ep[row, EP_SCORE] = silent_ns * 1e-9  # the common case, kept out of the call
        else:
            episode_step(ep, times, params, row, silent_ns * 1e-9,
                         params[row, S_AFTER_NS] * 1e-9, np.nan, over, not over, mono_ns,
                         time_ns)


# rms: running RMS of a fast signal (vibration) against an absolute and a learned limit.
R_ALPHA, R_REMOVE_MEAN, R_MAX_RMS, R_MAX_RATIO, R_WARMUP, R_CLEAR_FRACTION = range(3, 9)
RMS_PARAMS = 9
RS_N, RS_MEAN, RS_MS, RS_BASE = range(4)
RMS_STATE = 4


@njit(cache=True)
def rms_batch(params: F64, state: F64, ep: F64, times: I64, ctx: F64, sel: I64, rows: I64,
              values: F64, quality: U8, mono_ns: int, time_ns: int) -> None:
    """Exponentially weighted running RMS (of the deviation from a slower running mean when
    REMOVE_MEAN); the limit is min(MAX_RMS, MAX_RATIO x the RMS at the end of warm-up).

    Reference: ISO 20816-1 (vibration severity as broadband RMS); EWMA as in Lucas and
    Saccucci 1990.
    """
    size = ctx.shape[1]
    for j in range(sel.shape[0]):
        p = sel[j]
        if quality[p] != 0:
            continue
        row = rows[j]
        x = values[p]
        ctx[row, ring_slot(ep, row, size)] = x
        a = params[row, R_ALPHA]
        n = state[row, RS_N] + 1.0
        state[row, RS_N] = n
        if params[row, R_REMOVE_MEAN] != 0.0:
            if n == 1.0:
                state[row, RS_MEAN] = x
            state[row, RS_MEAN] += 0.1 * a * (x - state[row, RS_MEAN])
            d = x - state[row, RS_MEAN]
        else:
            d = x
        state[row, RS_MS] += a * (d * d - state[row, RS_MS])
        rms = math.sqrt(state[row, RS_MS])
        if n == params[row, R_WARMUP]:
            state[row, RS_BASE] = rms
        limit = params[row, R_MAX_RMS]
        if n >= params[row, R_WARMUP] and state[row, RS_BASE] > 0.0:
            limit = min(limit, params[row, R_MAX_RATIO] * state[row, RS_BASE])
        elif math.isinf(limit):
            continue
        if ep[row, EP_STATE] == IDLE and not (rms > limit):
            ep[row, EP_SCORE] = rms  # the common case, kept out of the call
        else:
            episode_step(ep, times, params, row, rms, limit, x, rms > limit,
                         rms < limit * params[row, R_CLEAR_FRACTION], mono_ns, time_ns)


def warm_up(kinds: Collection[str]) -> None:
    """Compile (or load from the cache) the kernels of these kinds, on one tiny row each."""
    one = np.zeros(1, dtype=np.int64)
    values = np.zeros(1)
    quality = np.zeros(1, dtype=np.uint8)
    from agent.detect.kernels_episode import new_episodes

    for kind, kernel, width, fields in (("limits", limits_batch, LIMIT_PARAMS, LIMIT_STATE),
                                        ("zscore", zscore_batch, ZSCORE_PARAMS, ZSCORE_STATE),
                                        ("drift", drift_batch, DRIFT_PARAMS, DRIFT_STATE),
                                        ("stuck", stuck_batch, STUCK_PARAMS, STUCK_STATE),
                                        ("rms", rms_batch, RMS_PARAMS, RMS_STATE)):
        if kind not in kinds:
            continue
        ep, times = new_episodes(1)
        params = np.zeros((1, width))
        state = np.zeros((1, fields))
        kernel(params, state, ep, times, np.zeros((1, 1)), one, one, values, quality, 1, 1)
        if kernel is stuck_batch:
            stuck_tick(params, state, ep, times, 2, 2)
