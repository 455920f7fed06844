"""numba kernels of `mset`: a memory of normal states, the similarity-weighted estimate of
each row, and Wald's SPRT on every tag's residual.

Rows are made and closed by `kernels.pca`'s helpers (a tag coming again, or the batch's end). Arrays, G groups
of at most D tags (smaller groups use the first `dim` columns), memories of at most K vectors:
`cur` (G, 3, D): value, fresh since the last row, ever seen; `buf` (G, W, D): the warm-up rows;
`model` (G, 2K + 3, D): the memory vectors (scaled rows), then W = G⁻¹ D (K rows: the estimate
is x̂ = Wᵀ k(x), k the similarities of x to the memory), then mean, scale and residual sigma
per tag; `sprt` (G, 4, D): the log-likelihood ratios of the upward and downward mean shift and
each one's last decision (1: H1); `work` (K + 2 D,): scratch.
"""

from __future__ import annotations

import math

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
from agent.detect.kernels.pca import (
    CUR_VALUE,
    ROW_FIT,
    ROW_SCORE,
    X_DIM,
    X_WARMUP,
    XS_FITTED,
    XS_N,
    end_row,
    feed_until_close,
    has_fresh,
)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

__all__ = ["P_AFTER", "P_CLEAR_NS", "P_MIN_NS"]
X_MEMORY, X_WIDTH, X_SHIFT, X_UPPER, X_LOWER = range(5, 10)
MSET_PARAMS = 10
"""X_MEMORY: memory vectors wanted (at least 2 per tag: each tag's lowest and highest row).
X_WIDTH: the Gaussian similarity's bandwidth, in scaled units times sqrt(dim). X_SHIFT: the
mean shift of the SPRT's H1, in residual sigmas. X_UPPER, X_LOWER: the SPRT's decision
bounds ln((1 - beta) / alpha) and ln(beta / (1 - alpha))."""
XS_M = 2
MSET_STATE = 3
"""XS_N and XS_FITTED (0, 1) as in `kernels.pca`, whose rows these are."""
CUR_PLANES = 3
"""CUR_VALUE, CUR_FRESH and CUR_SEEN as in `kernels.pca`: its input EWMA plane is not used."""
SP_UP, SP_DOWN, SP_UP_H1, SP_DOWN_H1 = range(4)
SPRT_PLANES = 4
RIDGE = 1e-3
"""Added to the similarity matrix's diagonal (1): near-duplicate memory vectors keep it
invertible."""


def memory_size(memory: int, dim: int, warmup: int) -> int:
    """The memory vectors a group holds: those wanted, at least 2 per tag, at most its rows."""
    return min(max(memory, 2 * dim), warmup)


@njit(cache=True)
def cholesky_solve(a: F64, b: F64) -> None:
    """Solves a x = b in place (b becomes x, one column per right-hand side) for the symmetric
    positive definite `a`, which is overwritten by its Cholesky factor (Golub and Van Loan,
    Matrix Computations, 4th ed., section 4.2)."""
    n = a.shape[0]
    for j in range(n):
        s = a[j, j]
        for k in range(j):
            s -= a[j, k] * a[j, k]
        a[j, j] = math.sqrt(max(s, 1e-300))
        for i in range(j + 1, n):
            s = a[i, j]
            for k in range(j):
                s -= a[i, k] * a[j, k]
            a[i, j] = s / a[j, j]
    for c in range(b.shape[1]):
        for i in range(n):
            s = b[i, c]
            for k in range(i):
                s -= a[i, k] * b[k, c]
            b[i, c] = s / a[i, i]
        for i in range(n - 1, -1, -1):
            s = b[i, c]
            for k in range(i + 1, n):
                s -= a[k, i] * b[k, c]
            b[i, c] = s / a[i, i]


@njit(cache=True)
def _estimate(model: F64, g: int, d: int, m: int, kcap: int, z: F64, sim: F64, out: F64,
              width: float) -> None:
    """x̂ of the scaled row z: the similarities of z to the m memory vectors (Gaussian kernel),
    combined by the learned weights."""
    inv = 1.0 / (2.0 * width * width)
    for j in range(m):
        acc = 0.0
        for i in range(d):
            diff = z[i] - model[g, j, i]
            acc += diff * diff
        sim[j] = math.exp(-acc * inv)
    for i in range(d):
        acc = 0.0
        for j in range(m):
            acc += model[g, kcap + j, i] * sim[j]
        out[i] = acc



@njit(cache=True)
def _argsort(values: F64) -> I64:
    """Indices of `values` in ascending order, ties by index (a heap sort: numba's own sort
    would put its source path into the ahead-of-time extension)."""
    n = values.shape[0]
    order = np.arange(n)
    for start in range(n // 2 - 1, -1, -1):
        _sift(values, order, start, n)
    for end in range(n - 1, 0, -1):
        order[0], order[end] = order[end], order[0]
        _sift(values, order, 0, end)
    return order


@njit(cache=True, inline="always")
def _sift(values: F64, order: I64, root: int, end: int) -> None:
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and _before(values, order[child], order[child + 1]):
            child += 1
        if not _before(values, order[root], order[child]):
            return
        order[root], order[child] = order[child], order[root]
        root = child


@njit(cache=True, inline="always")
def _before(values: F64, a: int, b: int) -> bool:
    return bool(values[a] < values[b] or (values[a] == values[b] and a < b))

@njit(cache=True)
def _fit(params: F64, state: F64, buf: F64, model: F64, g: int) -> None:
    """Scale from the warm-up rows; the memory: each tag's lowest and highest row, then rows
    evenly spaced in the order of their norm (vector ordering); the weights; the residual sigma
    of every learning row left out of the memory."""
    d = int(params[g, X_DIM])
    n = int(state[g, XS_N])
    kcap = (model.shape[1] - 3) // 2
    mean_row, scale_row, sigma_row = 2 * kcap, 2 * kcap + 1, 2 * kcap + 2
    for i in range(d):
        mu = 0.0
        for r in range(n):
            mu += buf[g, r, i]
        mu /= n
        v = 0.0
        for r in range(n):
            v += (buf[g, r, i] - mu) ** 2
        sd = math.sqrt(v / n)
        model[g, mean_row, i] = mu
        model[g, scale_row, i] = sd if sd > 0.0 else 1.0
    z = np.empty((n, d))
    norms = np.empty(n)
    for r in range(n):
        acc = 0.0
        for i in range(d):
            z[r, i] = (buf[g, r, i] - model[g, mean_row, i]) / model[g, scale_row, i]
            acc += z[r, i] * z[r, i]
        norms[r] = acc
    want = min(max(int(params[g, X_MEMORY]), 2 * d), n, kcap)
    chosen = np.zeros(n, dtype=np.bool_)
    picks = np.empty(want, dtype=np.int64)
    m = 0
    for i in range(d):
        lo = 0
        hi = 0
        for r in range(n):
            if z[r, i] < z[lo, i]:
                lo = r
            if z[r, i] > z[hi, i]:
                hi = r
        for r in (lo, hi):
            if m < want and not chosen[r]:
                chosen[r] = True
                picks[m] = r
                m += 1
    order = _argsort(norms)
    spread = want - m
    for k in range(1, spread + 1):
        r = order[math.floor(k * (n - 1.0) / (spread + 1.0) + 0.5)]
        if m < want and not chosen[r]:
            chosen[r] = True
            picks[m] = r
            m += 1
    width = params[g, X_WIDTH] * math.sqrt(d)
    inv = 1.0 / (2.0 * width * width)
    gram = np.empty((m, m))
    weights = np.empty((m, d))
    for a in range(m):
        for i in range(d):
            model[g, a, i] = z[picks[a], i]
            weights[a, i] = z[picks[a], i]
    for a in range(m):
        for b in range(m):
            acc = 0.0
            for i in range(d):
                diff = z[picks[a], i] - z[picks[b], i]
                acc += diff * diff
            gram[a, b] = math.exp(-acc * inv) + (RIDGE if a == b else 0.0)
    cholesky_solve(gram, weights)
    for a in range(m):
        for i in range(d):
            model[g, kcap + a, i] = weights[a, i]
    sim = np.empty(m)
    est = np.empty(d)
    total = np.zeros(d)
    square = np.zeros(d)
    left = 0
    for r in range(n):
        if chosen[r]:
            continue
        _estimate(model, g, d, m, kcap, z[r], sim, est, width)
        for i in range(d):
            e = z[r, i] - est[i]
            total[i] += e
            square[i] += e * e
        left += 1
    for i in range(d):
        sd = 0.0
        if left >= 2:
            mu = total[i] / left
            sd = math.sqrt(max(square[i] / left - mu * mu, 0.0))
        model[g, sigma_row, i] = sd if sd > 1e-9 else 1.0
    state[g, XS_M] = m
    state[g, XS_FITTED] = 1.0


@njit(cache=True)
def _sprt_side(sprt: F64, g: int, s: int, h: int, i: int, step: float, upper: float,
               lower: float) -> float:
    """One step of a side's SPRT: a decision resets its ratio and sets its state. Returns the
    side's score: its state (1: H1 decided last) plus its ratio's share of the upper bound."""
    llr = float(sprt[g, s, i]) + step
    if llr >= upper:
        llr = 0.0
        sprt[g, h, i] = 1.0
    elif llr <= lower:
        llr = 0.0
        sprt[g, h, i] = 0.0
    sprt[g, s, i] = llr
    return float(sprt[g, h, i]) + max(llr, 0.0) / upper


@njit(cache=True)
def _close_row(params: F64, state: F64, cur: F64, buf: F64, model: F64, sprt: F64, work: F64,
               ep: F64, times: I64, ctx: F64, g: int, mono_ns: int, time_ns: int) -> None:
    done = end_row(params, state, cur, buf, ep, ctx, g)
    if done == ROW_FIT:
        _fit(params, state, buf, model, g)
    if done != ROW_SCORE:
        return
    d = int(params[g, X_DIM])
    x = cur[g, CUR_VALUE]
    kcap = (model.shape[1] - 3) // 2
    m = int(state[g, XS_M])
    sim = work[:kcap]
    z = work[kcap:kcap + d]
    est = work[kcap + d:kcap + 2 * d]
    for i in range(d):
        z[i] = (x[i] - model[g, 2 * kcap, i]) / model[g, 2 * kcap + 1, i]
    _estimate(model, g, d, m, kcap, z, sim, est, params[g, X_WIDTH] * math.sqrt(d))
    shift = params[g, X_SHIFT]
    upper = params[g, X_UPPER]
    lower = params[g, X_LOWER]
    score = 0.0
    over = False
    for i in range(d):
        res = (z[i] - est[i]) / model[g, 2 * kcap + 2, i]
        up = _sprt_side(sprt, g, SP_UP, SP_UP_H1, i, shift * (res - 0.5 * shift), upper, lower)
        down = _sprt_side(sprt, g, SP_DOWN, SP_DOWN_H1, i, shift * (-res - 0.5 * shift), upper,
                          lower)
        score = max(score, up, down)
        if sprt[g, SP_UP_H1, i] != 0.0 or sprt[g, SP_DOWN_H1, i] != 0.0:
            over = True
    if ep[g, EP_STATE] == IDLE and not over:
        ep[g, EP_SCORE] = score  # the common case, kept out of the call
    else:
        episode_step(ep, times, params, g, score, 1.0, math.nan, over, not over, mono_ns,
                     time_ns)


@njit(cache=True)
def mset_batch(params: F64, state: F64, cur: F64, buf: F64, model: F64, sprt: F64, work: F64,
               ep: F64, times: I64, ctx: F64, sel: I64, rows: I64, cols: I64, values: F64,
               quality: U8, mono_ns: int, time_ns: int) -> None:
    """Streaming MSET: each row's residual from its estimate by the memory of normal states,
    every tag's residual through Wald's sequential probability ratio test of a mean shift up
    and down; over while any test last decided for the shift.
    References: K. C. Gross, R. M. Singer, S. W. Wegerich, J. P. Herzog et al., "Application
    of a model-based fault detection system to nuclear plant signals", ISAP 1997 (MSET);
    A. Wald, "Sequential tests of statistical hypotheses", Ann. Math. Stat. 16(2), 1945."""
    j, g = feed_until_close(cur, sel, rows, cols, values, quality, 0)
    while g >= 0:
        _close_row(params, state, cur, buf, model, sprt, work, ep, times, ctx, g, mono_ns,
                   time_ns)
        j, g = feed_until_close(cur, sel, rows, cols, values, quality, j)
    for j in range(sel.shape[0]):
        g = rows[j]
        if has_fresh(cur, g, int(params[g, X_DIM])):
            _close_row(params, state, cur, buf, model, sprt, work, ep, times, ctx, g, mono_ns,
                       time_ns)


def warm_up() -> None:
    """Compile (or load from the cache) the MSET kernels: a 2-tag group learning on 4 rows."""
    from agent.detect.kernels.episode import new_episodes

    params = np.zeros((1, MSET_PARAMS))
    params[0, X_DIM], params[0, X_WARMUP], params[0, X_MEMORY] = 2, 4, 4
    params[0, X_WIDTH], params[0, X_SHIFT] = 1.0, 2.0
    params[0, X_UPPER], params[0, X_LOWER] = math.log(0.99 / 1e-6), math.log(0.01)
    kcap = 4
    state = np.zeros((1, MSET_STATE))
    cur, buf = np.zeros((1, CUR_PLANES, 2)), np.zeros((1, 4, 2))
    model, sprt = np.zeros((1, 2 * kcap + 3, 2)), np.zeros((1, SPRT_PLANES, 2))
    work = np.zeros(kcap + 4)
    ep, times = new_episodes(1)
    ctx = np.zeros((1, 1, 2))
    sel, rows, cols = np.arange(2), np.zeros(2, dtype=np.int64), np.arange(2)
    quality = np.zeros(2, dtype=np.uint8)
    for i in range(6):
        mset_batch(params, state, cur, buf, model, sprt, work, ep, times, ctx, sel, rows, cols,
                   np.array([float(i), float(i * i % 5)]), quality, i, i)
