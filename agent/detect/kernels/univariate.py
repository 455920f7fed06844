"""numba kernels of the univariate anomaly detectors: limits, z-score, drift, stuck, RMS.

Every kernel has the same shape: `params` (rows, P) holds each row's configuration, `state`
(rows, S) its statistics, `ep`/`times` its episode (`kernels.episode`), `ctx` (rows, C) the
ring of its last good samples for the events' context. A batch comes as `runs` of samples
for one row each (`kernels.runs` says what they are and why; a tag in two rules feeds two
rows), folded run by run with the row held in locals. Samples whose quality is not GOOD (0)
never enter the statistics. Each kernel writes the rows it left with a STARTED, ENDED or
AFTER_DONE counter raised into `raised` (ascending) and returns how many: the rows Python
makes events for, found without scanning a column of every row. `buf` is scratch room for
the longest run's samples.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import numpy.typing as npt

from agent.detect.kernels.episode import (
    EP_SCORE,
    EP_STATE,
    IDLE,
    P_AFTER,
    P_CLEAR_NS,
    P_MIN_NS,
    episode_step,
)
from agent.detect.kernels.jit import njit
from agent.detect.kernels.runs import (
    RUN_COUNT,
    RUN_FIRST,
    RUN_ROW,
    RUN_STRIDE,
    count_context,
    run_close,
    run_gather,
    run_open,
    run_step,
)

__all__ = ["P_AFTER", "P_CLEAR_NS", "P_MIN_NS"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

COMMON_PARAMS = 3
"""Every params array starts with P_MIN_NS, P_CLEAR_NS and P_AFTER (`kernels.episode`)."""

# limits: level (low/high with hysteresis) or rate of change, one row each.
L_LOW, L_HIGH, L_HYST, L_MODE, L_MAX_RATE = range(3, 8)
LIMIT_PARAMS = 8
L_LEVEL, L_RATE = 0.0, 1.0
LS_N, LS_LAST, LS_LAST_MONO = range(3)
LIMIT_STATE = 3


@njit(cache=True)
def limits_batch(params: F64, state: F64, ep: F64, times: I64, ctx: F64, runs: I64,
                 values: F64, quality: U8, mono_ns: int, time_ns: int, raised: I64,
                 buf: F64) -> int:
    """Level limits with hysteresis and a rate-of-change limit; the score is the excess over
    the limit in the tag's unit (per second for a rate), so the peak is the max excess.

    Reference: a two-threshold comparator (Schmitt trigger), as in IEC 62682 alarm deadbands.
    """
    count, good = 0, 0
    for k in range(runs.shape[0]):
        row = runs[k, RUN_ROW]
        st, score, left = run_open(ep, row)
        done = 0.0
        n, last, last_mono = state[row, LS_N], state[row, LS_LAST], state[row, LS_LAST_MONO]
        high, low, hyst = params[row, L_HIGH], params[row, L_LOW], params[row, L_HYST]
        max_rate = params[row, L_MAX_RATE]
        level = params[row, L_MODE] == L_LEVEL
        good = run_gather(runs, k, values, quality, buf, good)
        for i in range(good):
            x = buf[i]
            left, done = count_context(left, done)
            if level:
                excess = max(x - high, low - x)
                if st == IDLE and not (excess > 0.0):
                    score = excess  # the common case, kept out of the call
                else:
                    score = excess
                    limit = high if x - high >= low - x else low
                    st, left = run_step(ep, times, params, row, left, excess, limit, x,
                                        excess > 0.0, excess < -hyst, mono_ns, time_ns, i + 1)
            else:
                # After a run's first sample last_mono == mono_ns: one rate per row and batch.
                if n > 0.0 and mono_ns > last_mono:
                    dt = (mono_ns - last_mono) * 1e-9
                    excess = abs(x - last) / dt - max_rate
                    score = excess
                    if not (st == IDLE and not (excess > 0.0)):
                        st, left = run_step(ep, times, params, row, left, excess, max_rate, x,
                                            excess > 0.0, excess <= 0.0, mono_ns, time_ns, i + 1)
                last_mono = float(mono_ns)
            n += 1.0
            last = x
        state[row, LS_N], state[row, LS_LAST], state[row, LS_LAST_MONO] = n, last, last_mono
        if run_close(ep, ctx, buf, row, score, left, done, good,
                     params[row, P_AFTER]) != 0.0 and (
                k + 1 == runs.shape[0] or runs[k + 1, RUN_ROW] != row):  # its last run
            raised[count] = row
            count += 1
    return count


# z-score: smoothed value against an outlier-gated EWMA baseline.
Z_THRESHOLD, Z_CLEAR, Z_ALPHA_SMOOTH, Z_ALPHA_BASE, Z_WARMUP, Z_DIRECTION = range(3, 9)
ZSCORE_PARAMS = 9
ZS_N, ZS_SMOOTH, ZS_MEAN, ZS_VAR = range(4)
ZSCORE_STATE = 4


@njit(cache=True)
def zscore_batch(params: F64, state: F64, ep: F64, times: I64, ctx: F64, runs: I64,
                 values: F64, quality: U8, mono_ns: int, time_ns: int, raised: I64,
                 buf: F64) -> int:
    """Streaming z-score of an EWMA-smoothed value against an EWMA mean and variance, robust by
    gating: a sample over the threshold or in an episode never updates the baseline. NaN for
    the first `warmup` samples. Reference: Lucas and Saccucci, Technometrics 32(1), 1990."""
    count, good = 0, 0
    for k in range(runs.shape[0]):
        row = runs[k, RUN_ROW]
        st, score, left = run_open(ep, row)
        done = 0.0
        n, smooth = state[row, ZS_N], state[row, ZS_SMOOTH]
        mean, var = state[row, ZS_MEAN], state[row, ZS_VAR]
        alpha_smooth, alpha_base = params[row, Z_ALPHA_SMOOTH], params[row, Z_ALPHA_BASE]
        warmup, direction = params[row, Z_WARMUP], params[row, Z_DIRECTION]
        threshold, clear = params[row, Z_THRESHOLD], params[row, Z_CLEAR]
        good = run_gather(runs, k, values, quality, buf, good)
        i = 0
        while i < good and (n < warmup or n == 0.0):  # the first sample, the warm-up
            x = buf[i]
            i += 1
            left, done = count_context(left, done)
            n += 1.0
            if n == 1.0:
                smooth = x
                mean = x
                var = 0.0
            else:
                smooth += alpha_smooth * (x - smooth)
            sd = math.sqrt(var)
            over = False
            if n > warmup and sd > 0.0:
                z = (smooth - mean) / sd
                score = abs(z) if direction == 0.0 else z * direction
                over = score > threshold
                if not (st == IDLE and not over):
                    st, left = run_step(ep, times, params, row, left, score, threshold, x,
                                        over, score < clear, mono_ns, time_ns, i)
            if st == IDLE and not over:
                # During warm-up max(alpha, 1/n): the exact mean and variance of the warm-up
                # (an EWMA variance starting from 0 would inflate the first z-scores).
                a = alpha_base
                if n <= warmup:
                    a = max(a, 1.0 / n)
                d = smooth - mean
                mean += a * d
                var = (1.0 - a) * (var + a * d * d)
        # Warmed up: every sample is scored once the deviation is > 0, the baseline weight
        # is alpha: the loop above without its tests of n, and quicker for the common
        # sample, in the baseline and not over. Over the threshold is tested as
        # d^2 > threshold^2 var (|z| > threshold without a square root and a division);
        # z itself is computed only for a sample the episode looks at, and for the run's
        # last one (its score). The EWMAs are written (1 - a) m + a x: one multiplication
        # and one addition on each one's chain from sample to sample, not three operations.
        keep_smooth, keep_base = 1.0 - alpha_smooth, 1.0 - alpha_base
        threshold2 = threshold * threshold
        last_d, last_var = 0.0, 0.0  # of the run's last scored sample (var > 0)
        for j in range(i, good):
            x = buf[j]
            left, done = count_context(left, done)
            n += 1.0
            smooth = keep_smooth * smooth + alpha_smooth * x
            d = smooth - mean
            over = var > 0.0 and d * d > threshold2 * var and d * direction >= 0.0
            if var > 0.0:
                last_d, last_var = d, var
                if not (st == IDLE and not over):
                    z = d / math.sqrt(var)
                    score = abs(z) if direction == 0.0 else z * direction
                    st, left = run_step(ep, times, params, row, left, score, threshold, x,
                                        over, score < clear, mono_ns, time_ns, j + 1)
            if st == IDLE and not over:
                mean = keep_base * mean + alpha_base * smooth
                var = keep_base * (var + alpha_base * d * d)
        if last_var > 0.0:
            z = last_d / math.sqrt(last_var)
            score = abs(z) if direction == 0.0 else z * direction
        state[row, ZS_N], state[row, ZS_SMOOTH] = n, smooth
        state[row, ZS_MEAN], state[row, ZS_VAR] = mean, var
        if run_close(ep, ctx, buf, row, score, left, done, good,
                     params[row, P_AFTER]) != 0.0 and (
                k + 1 == runs.shape[0] or runs[k + 1, RUN_ROW] != row):  # its last run
            raised[count] = row
            count += 1
    return count


# drift: two-sided CUSUM of the standardized value against the warm-up's mean and deviation.
D_WARMUP, D_SLACK, D_THRESHOLD, D_CLEAR = range(3, 7)
DRIFT_PARAMS = 7
DS_N, DS_MEAN, DS_M2, DS_POS, DS_NEG = range(5)
DRIFT_STATE = 5


@njit(cache=True)
def drift_batch(params: F64, state: F64, ep: F64, times: I64, ctx: F64, runs: I64,
                values: F64, quality: U8, mono_ns: int, time_ns: int, raised: I64,
                buf: F64) -> int:
    """Two-sided CUSUM in units of the warm-up's standard deviation; score = max(S+, S-).

    Reference: E. S. Page, "Continuous inspection schemes", Biometrika 41(1/2), 1954.
    The mean and deviation are learned (Welford) over the first `warmup` good samples.
    """
    count, good = 0, 0
    for k in range(runs.shape[0]):
        row = runs[k, RUN_ROW]
        st, score, left = run_open(ep, row)
        done = 0.0
        n, mean, m2 = state[row, DS_N], state[row, DS_MEAN], state[row, DS_M2]
        s_pos, s_neg = state[row, DS_POS], state[row, DS_NEG]
        warmup, slack = params[row, D_WARMUP], params[row, D_SLACK]
        threshold, clear = params[row, D_THRESHOLD], params[row, D_CLEAR]
        good = run_gather(runs, k, values, quality, buf, good)
        i = 0
        while i < good and n < warmup:  # learning: mean and deviation change every sample
            x = buf[i]
            i += 1
            left, done = count_context(left, done)
            n += 1.0
            delta = x - mean
            mean += delta / n
            m2 += delta * (x - mean)
        # Learned: the deviation is fixed from here on, its inverse computed once per run.
        sd = math.sqrt(m2 / n) if n > 0.0 else 0.0
        if sd <= 0.0:
            sd = 1e-12 * max(1.0, abs(mean))
        inv_sd = 1.0 / sd
        for j in range(i, good):
            x = buf[j]
            left, done = count_context(left, done)
            z = (x - mean) * inv_sd
            # One addition on each sum's chain from sample to sample, not two: the
            # slack is applied to z first (what the processor waits for is the chain).
            s_pos = max(0.0, s_pos + (z - slack))
            s_neg = max(0.0, s_neg - (z + slack))
            score = max(s_pos, s_neg)
            if not (st == IDLE and not (score > threshold)):
                st, left = run_step(ep, times, params, row, left, score, threshold, x,
                                    score > threshold, score < clear, mono_ns, time_ns, j + 1)
        state[row, DS_N], state[row, DS_MEAN], state[row, DS_M2] = n, mean, m2
        state[row, DS_POS], state[row, DS_NEG] = s_pos, s_neg
        if run_close(ep, ctx, buf, row, score, left, done, good,
                     params[row, P_AFTER]) != 0.0 and (
                k + 1 == runs.shape[0] or runs[k + 1, RUN_ROW] != row):  # its last run
            raised[count] = row
            count += 1
    return count


# stuck: a flat-lined value (mode FLAT) or no good sample for a while (mode SILENT).
S_MODE, S_AFTER_NS, S_MIN_CHANGE = range(3, 6)
STUCK_PARAMS = 6
S_FLAT, S_SILENT = 0.0, 1.0
SS_N, SS_REF, SS_CHANGE_MONO, SS_GOOD_MONO = range(4)
STUCK_STATE = 4


@njit(cache=True)
def stuck_batch(params: F64, state: F64, ep: F64, times: I64, ctx: F64, runs: I64,
                values: F64, quality: U8, mono_ns: int, time_ns: int, raised: I64,
                buf: F64) -> int:
    """Seconds since the value last moved by more than `min_change` (FLAT rows), or since
    the last good sample (SILENT rows: a bad sample is no delivery). Score in seconds.

    Reference: flat-line and timeout checks of sensor validation, e.g. ISO 13374-2's
    data-acquisition quality checks.
    """
    count, good = 0, 0
    for k in range(runs.shape[0]):
        row, first, stride = runs[k, RUN_ROW], runs[k, RUN_FIRST], runs[k, RUN_STRIDE]
        st, score, left = run_open(ep, row)
        done = 0.0
        n, ref = state[row, SS_N], state[row, SS_REF]
        change_mono, good_mono = state[row, SS_CHANGE_MONO], state[row, SS_GOOD_MONO]
        after_ns, min_change = params[row, S_AFTER_NS], params[row, S_MIN_CHANGE]
        if n == 0.0 and runs[k, RUN_COUNT] > 0:  # the row's first samples: count from now
            good_mono = float(mono_ns)
            change_mono = float(mono_ns)
        if params[row, S_MODE] == S_FLAT:  # GOOD samples only
            good = run_gather(runs, k, values, quality, buf, good)
            if good > 0:
                good_mono = float(mono_ns)
            for i in range(good):
                x = buf[i]
                left, done = count_context(left, done)
                if n == 0.0 or abs(x - ref) > min_change:
                    ref = x
                    change_mono = float(mono_ns)
                n += 1.0
                flat_ns = mono_ns - change_mono
                over = flat_ns >= after_ns
                score = flat_ns * 1e-9
                if not (st == IDLE and not over):
                    st, left = run_step(ep, times, params, row, left, score, after_ns * 1e-9,
                                        x, over, not over, mono_ns, time_ns, i + 1)
        else:  # SILENT: every sample, a bad one is no delivery
            good = 0
            for i in range(runs[k, RUN_COUNT]):
                p = first + i * stride
                x = values[p]
                if quality[p] == 0:
                    buf[good] = x
                    good += 1
                    left, done = count_context(left, done)
                    good_mono = float(mono_ns)
                n += 1.0
                silent_ns = mono_ns - good_mono
                over = silent_ns >= after_ns
                score = silent_ns * 1e-9
                if not (st == IDLE and not over):
                    st, left = run_step(ep, times, params, row, left, score, after_ns * 1e-9,
                                        x, over, not over, mono_ns, time_ns, good)
        state[row, SS_N], state[row, SS_REF] = n, ref
        state[row, SS_CHANGE_MONO], state[row, SS_GOOD_MONO] = change_mono, good_mono
        if run_close(ep, ctx, buf, row, score, left, done, good,
                     params[row, P_AFTER]) != 0.0 and (
                k + 1 == runs.shape[0] or runs[k + 1, RUN_ROW] != row):  # its last run
            raised[count] = row
            count += 1
    return count


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
R_ALPHA, R_REMOVE_MEAN, R_MAX_RMS, R_MAX_RATIO, R_WARMUP, R_CLEAR_FRACTION, R_MIN_LIMIT = \
    range(3, 10)
RMS_PARAMS = 10
RS_N, RS_MEAN, RS_MS, RS_BASE = range(4)
RMS_STATE = 4


@njit(cache=True)
def rms_batch(params: F64, state: F64, ep: F64, times: I64, ctx: F64, runs: I64,
              values: F64, quality: U8, mono_ns: int, time_ns: int, raised: I64,
              buf: F64) -> int:
    """Exponentially weighted running RMS (of the deviation from a slower running mean with
    REMOVE_MEAN) against min(MAX_RMS, max(MIN_LIMIT, MAX_RATIO x the RMS at the end of warm-up)).
    Reference: ISO 20816-1 (broadband RMS); EWMA as in Lucas and Saccucci 1990."""
    count, good = 0, 0
    for k in range(runs.shape[0]):
        row = runs[k, RUN_ROW]
        st, score, left = run_open(ep, row)
        done = 0.0
        n, mean, ms, base = state[row, RS_N], state[row, RS_MEAN], state[row, RS_MS], \
            state[row, RS_BASE]
        a, remove_mean, warmup = params[row, R_ALPHA], params[row, R_REMOVE_MEAN] != 0.0, \
            params[row, R_WARMUP]
        max_rms, max_ratio = params[row, R_MAX_RMS], params[row, R_MAX_RATIO]
        min_limit = params[row, R_MIN_LIMIT]
        clear_fraction = params[row, R_CLEAR_FRACTION]
        good = run_gather(runs, k, values, quality, buf, good)
        i = 0
        while i < good and (n < warmup or n == 0.0):  # the first sample, the warm-up
            x = buf[i]
            i += 1
            left, done = count_context(left, done)
            n += 1.0
            if remove_mean:
                if n == 1.0:
                    mean = x
                mean += 0.1 * a * (x - mean)
                d = x - mean
            else:
                d = x
            ms += a * (d * d - ms)
            rms = math.sqrt(ms)
            if n == warmup:
                base = rms
            limit = max_rms
            if n >= warmup and base > 0.0:
                limit = min(limit, max(min_limit, max_ratio * base))
            elif math.isinf(limit):
                continue
            score = rms
            if not (st == IDLE and not (rms > limit)):
                st, left = run_step(ep, times, params, row, left, rms, limit, x, rms > limit,
                                    rms < limit * clear_fraction, mono_ns, time_ns, i)
        # Warmed up: the limit no longer changes (its base is the RMS at the end of warm-up).
        limit = max_rms
        scored = True
        if base > 0.0:
            limit = min(limit, max(min_limit, max_ratio * base))
        elif math.isinf(limit):
            scored = False
        for j in range(i, good):
            x = buf[j]
            left, done = count_context(left, done)
            n += 1.0
            if remove_mean:
                mean += 0.1 * a * (x - mean)
                d = x - mean
            else:
                d = x
            ms += a * (d * d - ms)
            rms = math.sqrt(ms)
            if scored:
                score = rms
                if not (st == IDLE and not (rms > limit)):
                    st, left = run_step(ep, times, params, row, left, rms, limit, x,
                                        rms > limit, rms < limit * clear_fraction, mono_ns,
                                        time_ns, j + 1)
        state[row, RS_N], state[row, RS_MEAN], state[row, RS_MS], state[row, RS_BASE] = \
            n, mean, ms, base
        if run_close(ep, ctx, buf, row, score, left, done, good,
                     params[row, P_AFTER]) != 0.0 and (
                k + 1 == runs.shape[0] or runs[k + 1, RUN_ROW] != row):  # its last run
            raised[count] = row
            count += 1
    return count


def warm_up(kinds: Collection[str]) -> None:
    """Compile (or load from the cache) the kernels of these kinds, on one tiny row each."""
    runs = np.array([[0, 0, 1, 1]], dtype=np.int64)
    values = np.zeros(1)
    quality = np.zeros(1, dtype=np.uint8)
    from agent.detect.kernels.episode import new_episodes

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
        kernel(params, state, ep, times, np.zeros((1, 1)), runs, values, quality, 1, 1,
               np.zeros(1, dtype=np.int64), np.zeros(1))
        if kernel is stuck_batch:
            stuck_tick(params, state, ep, times, 2, 2)
