"""numba kernel of the `novelty` detector: which transitions of a tag are new, and level shifts.

A tag's value is quantized at two resolutions (5 and 10 levels over the range of its
warm-up); each pair of consecutive levels is counted in a hashed table of the row. A
sample's raw novelty is the share of resolutions whose pair was never seen; the score is
the z of its short EWMA against the raw novelty's own long EWMA mean and variance, so a tag
that is always somewhat new (a trend, noise) does not alarm for being so. A fast level
score (the smoothed value against a slow EWMA mean and deviation) catches what moves
smoothly inside the learned transitions. An episode starts when either is over its threshold
and ends `hold` samples after the last sample over. Same frame as `kernels.univariate`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from agent.config.detection import halflife_alpha
from agent.detect.kernels.episode import IDLE, P_AFTER
from agent.detect.kernels.jit import njit
from agent.detect.kernels.runs import (
    RUN_ROW,
    count_context,
    run_close,
    run_gather,
    run_open,
    run_step,
)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

N_WARMUP, N_THRESHOLD, N_LEVEL_Z, N_HOLD = range(3, 7)
NOVELTY_PARAMS = 7

LEVELS = (5.0, 10.0)
"""Quantization levels over the warm-up's range, coarse and fine."""
TABLE = 1024
"""Hashed pair counters per row (a power of two); a collision only hides a novelty."""
NOVELTY_SMOOTH_HALFLIFE, NOVELTY_BASE_HALFLIFE = 4.0, 2000.0
LEVEL_SMOOTH_HALFLIFE, LEVEL_BASE_HALFLIFE = 6.0, 4000.0
"""In samples: the short and long EWMAs of the raw novelty and of the value."""
MARGIN = 0.1
"""The levels start this share of the range below the warm-up's lowest value."""
MAX_BIN = 16383.0
"""Levels are clipped to +-MAX_BIN: a garbage value far out is new, not an overflow, and a
pair's key fits 32 bits, so its multiplicative hash is exact in int64 (compiled or not)."""

(NS_N, NS_LO, NS_HI, NS_W0, NS_W1, NS_PREV0, NS_PREV1, NS_NOV_SHORT, NS_NOV_MEAN, NS_NOV_VAR,
 NS_X_SHORT, NS_X_MEAN, NS_X_VAR, NS_SINCE_OVER) = range(14)
NS_TABLE = 16
NS_BUF = NS_TABLE + TABLE
"""The warm-up's samples follow the table (as many as the row's warm-up): the range is known
only at its end, then they are replayed into the table and zeroed."""


def novelty_state_fields(longest_warmup: int) -> int:
    """Width of a state row for warm-ups up to `longest_warmup` samples."""
    return NS_BUF + longest_warmup


A_NOV_SHORT = halflife_alpha(NOVELTY_SMOOTH_HALFLIFE)
A_NOV_BASE = halflife_alpha(NOVELTY_BASE_HALFLIFE)
A_X_SHORT, A_X_BASE = halflife_alpha(LEVEL_SMOOTH_HALFLIFE), halflife_alpha(LEVEL_BASE_HALFLIFE)


@njit(cache=True, inline="always")
def _level(x: float, lo: float, width: float) -> float:
    return float(min(max(math.floor((x - lo) / width), -MAX_BIN), MAX_BIN))


@njit(cache=True, inline="always")
def _seen(state: F64, row: int, resolution: int, before: float, now: float) -> bool:
    """Counts the pair (before, now) at one resolution; True when it had been seen."""
    key = ((int(before + MAX_BIN) << 16) | int(now + MAX_BIN)) << 1 | resolution
    slot = NS_TABLE + (((key * 1540483477) & 0xFFFFFFFF) >> 22)  # Knuth: the top 10 of 32 bits
    count = state[row, slot]
    state[row, slot] = count + 1.0
    return bool(count > 0.0)


@njit(cache=True, inline="always")
def _raw(state: F64, row: int, x: float, first: bool) -> float:
    """The sample's raw novelty (0, 0.5 or 1); moves the previous levels on."""
    lo = state[row, NS_LO]
    b0 = _level(x, lo, state[row, NS_W0])
    b1 = _level(x, lo, state[row, NS_W1])
    raw = 0.0
    if not first:
        if not _seen(state, row, 0, state[row, NS_PREV0], b0):
            raw += 0.5
        if not _seen(state, row, 1, state[row, NS_PREV1], b1):
            raw += 0.5
    state[row, NS_PREV0], state[row, NS_PREV1] = b0, b1
    return raw


@njit(cache=True)
def _learn_range(state: F64, row: int, warmup: int) -> None:
    """End of the warm-up: the levels from its range, its samples replayed into the table and
    the raw novelty's EWMAs (exactly as if the range had been known from the first sample)."""
    lo, hi = state[row, NS_LO], state[row, NS_HI]
    for k in range(2):
        width = (hi - lo) / LEVELS[k]
        if not width > 0.0:
            width = max(abs(lo) * 1e-3, 1e-9)
        state[row, NS_W0 + k] = width
    state[row, NS_LO] = lo - MARGIN * (hi - lo)
    short, mean, var = 0.0, 0.0, 0.0
    for j in range(warmup):
        raw = _raw(state, row, state[row, NS_BUF + j], j == 0)
        short += A_NOV_SHORT * (raw - short)
        a = A_NOV_BASE
        d = raw - mean
        mean += a * d
        var = (1.0 - a) * (var + a * d * d)
        state[row, NS_BUF + j] = 0.0
    state[row, NS_NOV_SHORT], state[row, NS_NOV_MEAN], state[row, NS_NOV_VAR] = short, mean, var


@njit(cache=True)
def novelty_batch(params: F64, state: F64, ep: F64, times: I64, ctx: F64, runs: I64,
                  values: F64, quality: U8, mono_ns: int, time_ns: int, raised: I64,
                  buf: F64) -> int:
    """Novelty of a tag's transitions and shift of its level, one row per tag; the score is
    the larger of the two z's over its threshold (1: at it); NaN during the warm-up.
    Non-finite values are skipped like bad-quality samples."""
    count, good = 0, 0
    for k in range(runs.shape[0]):
        row = runs[k, RUN_ROW]
        st, score, left = run_open(ep, row)
        done = 0.0
        warmup = int(params[row, N_WARMUP])
        threshold, level_z = params[row, N_THRESHOLD], params[row, N_LEVEL_Z]
        hold = params[row, N_HOLD]
        good = run_gather(runs, k, values, quality, buf, good)
        for i in range(good):
            x = buf[i]
            left, done = count_context(left, done)
            if not math.isfinite(x):
                continue
            n = state[row, NS_N] + 1.0
            state[row, NS_N] = n
            if n == 1.0:
                state[row, NS_LO], state[row, NS_HI] = x, x
                state[row, NS_X_SHORT], state[row, NS_X_MEAN] = x, x
            xs = state[row, NS_X_SHORT] + A_X_SHORT * (x - state[row, NS_X_SHORT])
            state[row, NS_X_SHORT] = xs
            xm, xv = state[row, NS_X_MEAN], state[row, NS_X_VAR]
            if n <= warmup:
                state[row, NS_LO] = min(state[row, NS_LO], x)
                state[row, NS_HI] = max(state[row, NS_HI], x)
                state[row, NS_BUF + int(n) - 1] = x
                if n == warmup:
                    _learn_range(state, row, warmup)
            else:
                raw = _raw(state, row, x, False)
                short = state[row, NS_NOV_SHORT] + A_NOV_SHORT * (raw - state[row, NS_NOV_SHORT])
                state[row, NS_NOV_SHORT] = short
                mean, var = state[row, NS_NOV_MEAN], state[row, NS_NOV_VAR]
                z_novel = (short - mean) / max(math.sqrt(var), 1e-3)
                z_level = abs(xs - xm) / math.sqrt(xv) if xv > 0.0 else 0.0
                score = max(z_novel / threshold, z_level / level_z)
                since = state[row, NS_SINCE_OVER] + 1.0
                over = score > 1.0
                if over:
                    since = 0.0
                state[row, NS_SINCE_OVER] = since
                if not (st == IDLE and not over):
                    st, left = run_step(ep, times, params, row, left, score, 1.0, x, over,
                                        since > hold, mono_ns, time_ns, i + 1)
                d = raw - mean
                state[row, NS_NOV_MEAN] = mean + A_NOV_BASE * d
                state[row, NS_NOV_VAR] = (1.0 - A_NOV_BASE) * (var + A_NOV_BASE * d * d)
            a = max(A_X_BASE, 1.0 / n)  # the exact mean and variance until the EWMA's own
            d = x - xm
            state[row, NS_X_MEAN] = xm + a * d
            state[row, NS_X_VAR] = (1.0 - a) * (xv + a * d * d)
        if run_close(ep, ctx, buf, row, score, left, done, good,
                     params[row, P_AFTER]) != 0.0 and (
                k + 1 == runs.shape[0] or runs[k + 1, RUN_ROW] != row):  # its last run
            raised[count] = row
            count += 1
    return count


def warm_up() -> None:
    """Compile (or load from the cache) the kernel on one tiny row."""
    from agent.detect.kernels.episode import new_episodes

    ep, times = new_episodes(1)
    params = np.zeros((1, NOVELTY_PARAMS))
    params[0, N_WARMUP], params[0, N_THRESHOLD], params[0, N_LEVEL_Z] = 2.0, 4.0, 6.0
    state = np.zeros((1, novelty_state_fields(2)))
    novelty_batch(params, state, ep, times, np.zeros((1, 1)), np.array([[0, 0, 1, 3]]),
                  np.array([1.0, 2.0, 3.0]), np.zeros(3, dtype=np.uint8), 1, 1,
                  np.zeros(1, dtype=np.int64), np.zeros(3))
