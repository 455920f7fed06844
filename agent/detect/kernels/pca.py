"""numba kernels of the multivariate detector: PCA learned on normal operation, T² and Q.

One row of a group is the latest good value of each of its tags; a batch closes a row when
a tag comes again or the batch ends (tags of a burst arrive interleaved, in time order).
Arrays, G groups of at most D tags (smaller groups use the first `dim` columns):
`cur` (G, 4, D): value, fresh since the last row, ever seen, and the EWMA of the rows (input
smoothing); `buf` (G, W, D): the warm-up rows; `model` (G, D + 3, D): eigenvectors as
columns, then mean, scale, eigenvalues.
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
    ring_slot,
)
from agent.detect.kernels.jit import njit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

__all__ = ["P_AFTER", "P_CLEAR_NS", "P_MIN_NS"]
X_DIM, X_WARMUP, X_VARIANCE, X_ALPHA, X_FACTOR, X_CLEAR, X_CONFIDENCE_Z, X_INPUT_ALPHA = (
    range(3, 11))
PCA_PARAMS = 11
"""X_CONFIDENCE_Z: the standard normal quantile of the control limits' confidence (0: the
limits are the largest smoothed T² and Q seen while learning instead). X_INPUT_ALPHA: the
EWMA weight of a new row before T² and Q (1: none; the multivariate EWMA)."""
XS_N, XS_FITTED, XS_K, XS_THR_T2, XS_THR_Q, XS_T2, XS_Q = range(7)
PCA_STATE = 7
CUR_VALUE, CUR_FRESH, CUR_SEEN, CUR_EWMA = range(4)
CUR_PLANES = 4
ROW_NONE, ROW_LEARNING, ROW_FIT, ROW_SCORE = range(4)
"""What `end_row` did with a group's row."""


@njit(cache=True)
def jacobi_eigh(a: F64, vectors: F64, values: F64) -> None:
    """Eigenvalues (descending) and eigenvectors (columns) of the symmetric matrix `a`,
    which is overwritten. Cyclic Jacobi rotations: Golub and Van Loan, Matrix
    Computations, 4th ed., section 8.5 (exact to rounding for the small matrices here)."""
    d = a.shape[0]
    vectors[:, :] = 0.0
    for i in range(d):
        vectors[i, i] = 1.0
    for _sweep in range(100):
        off = 0.0
        total = 0.0
        for p in range(d):
            for q in range(d):
                total += a[p, q] * a[p, q]
                if p != q:
                    off += a[p, q] * a[p, q]
        if off <= 1e-30 * total or off == 0.0:
            break
        for p in range(d - 1):
            for q in range(p + 1, d):
                apq = a[p, q]
                if apq == 0.0:
                    continue
                theta = (a[q, q] - a[p, p]) / (2.0 * apq)
                t = (1.0 if theta >= 0.0 else -1.0) / (abs(theta) + math.sqrt(theta * theta + 1.0))
                c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                for k in range(d):
                    akp = a[k, p]
                    akq = a[k, q]
                    a[k, p] = c * akp - s * akq
                    a[k, q] = s * akp + c * akq
                for k in range(d):
                    apk = a[p, k]
                    aqk = a[q, k]
                    a[p, k] = c * apk - s * aqk
                    a[q, k] = s * apk + c * aqk
                for k in range(d):
                    vkp = vectors[k, p]
                    vkq = vectors[k, q]
                    vectors[k, p] = c * vkp - s * vkq
                    vectors[k, q] = s * vkp + c * vkq
    for i in range(d):
        values[i] = a[i, i]
    # Selection sort, descending, columns moved along (d is at most a few dozen).
    for i in range(d):
        best = i
        for j in range(i + 1, d):
            if values[j] > values[best]:
                best = j
        if best != i:
            tmp = values[i]
            values[i] = values[best]
            values[best] = tmp
            for k in range(d):
                tv = vectors[k, i]
                vectors[k, i] = vectors[k, best]
                vectors[k, best] = tv


@njit(cache=True)
def _statistics(model: F64, g: int, d: int, k: int, x: F64) -> tuple[float, float]:
    """T² (Hotelling, in the k principal components) and Q (squared prediction error)."""
    z2 = 0.0
    t2 = 0.0
    proj2 = 0.0
    for i in range(d):
        zi = (x[i] - model[g, d, i]) / model[g, d + 1, i]
        z2 += zi * zi
    for c in range(k):
        t = 0.0
        for i in range(d):
            t += model[g, i, c] * (x[i] - model[g, d, i]) / model[g, d + 1, i]
        proj2 += t * t
        t2 += t * t / max(model[g, d + 2, c], 1e-12)
    return t2, max(z2 - proj2, 0.0)


@njit(cache=True)
def _smoothed_statistics(model: F64, g: int, d: int, k: int, ewma: F64, x: F64,
                         lam: float) -> tuple[float, float]:
    """T² and Q of the rows' EWMA (`ewma` moved by `x`, weight lam), times (2 - lam) / lam so that
    they keep the limits of single rows: the asymptotic MEWMA of Lowry, Woodall, Champ and
    Rigdon, Technometrics 34(1), 1992."""
    for i in range(d):
        ewma[i] += lam * (x[i] - ewma[i])
    t2, q = _statistics(model, g, d, k, ewma)
    gain = (2.0 - lam) / lam
    return t2 * gain, q * gain


@njit(cache=True)
def _f_quantile(df1: float, df2: float, z: float) -> float:
    """The F(df1, df2) quantile whose normal quantile is z: Paulson (1942), solving
    ((1 - c2) u - (1 - c1)) / sqrt(c1 + c2 u²) = z for u = F^(1/3), c = 2 / (9 df)."""
    c1, c2 = 2.0 / (9.0 * df1), 2.0 / (9.0 * df2)
    a, b = 1.0 - c2, 1.0 - c1
    lead = a * a - z * z * c2
    disc = a * a * b * b - lead * (b * b - z * z * c1)
    if lead <= 0.0 or disc < 0.0:
        return math.nan
    u = (a * b + math.sqrt(disc)) / lead
    return u * u * u


@njit(cache=True)
def control_limits(values: F64, d: int, k: int, n: int, z: float) -> tuple[float, float]:
    """Control limits of T² and Q at the confidence whose normal quantile is z, from the
    eigenvalues of the n learning rows (k of d kept); NaN where undefined. T²: Tracy, Young and
    Mason (1992), future observation, F quantile by Paulson; Q: Jackson and Mudholkar (1979)."""
    t2 = math.nan
    if n > k + 1:
        t2 = k * (n - 1.0) * (n + 1.0) / (n * (n - k)) * _f_quantile(k, n - k, z)
    theta1 = theta2 = theta3 = 0.0
    for i in range(k, d):
        lam = max(values[i], 0.0)
        theta1 += lam
        theta2 += lam * lam
        theta3 += lam * lam * lam
    q = math.nan
    if theta1 > 1e-12 and theta2 > 0.0:
        h0 = 1.0 - 2.0 * theta1 * theta3 / (3.0 * theta2 * theta2)
        if h0 > 1e-6:
            base = (z * math.sqrt(2.0 * theta2 * h0 * h0) / theta1 + 1.0
                    + theta2 * h0 * (h0 - 1.0) / (theta1 * theta1))
            if base > 0.0:
                q = theta1 * base ** (1.0 / h0)
    return t2, q


@njit(cache=True)
def _fit(params: F64, state: F64, cur: F64, buf: F64, model: F64, g: int) -> None:
    """Mean, scale and principal components of the warm-up rows. Thresholds: the control limits
    at the configured confidence, else (or where undefined) the largest smoothed T² and Q of
    those rows, times FACTOR. An input EWMA runs over the warm-up rows from the learned mean."""
    d = int(params[g, X_DIM])
    n = int(state[g, XS_N])
    for i in range(d):
        m = 0.0
        for r in range(n):
            m += buf[g, r, i]
        m /= n
        v = 0.0
        for r in range(n):
            v += (buf[g, r, i] - m) ** 2
        sd = math.sqrt(v / n)
        model[g, d, i] = m
        model[g, d + 1, i] = sd if sd > 0.0 else 1.0
    cov = np.zeros((d, d))
    for i in range(d):
        for j in range(i, d):
            acc = 0.0
            for r in range(n):
                acc += ((buf[g, r, i] - model[g, d, i]) / model[g, d + 1, i]) * (
                    (buf[g, r, j] - model[g, d, j]) / model[g, d + 1, j])
            cov[i, j] = acc / max(n - 1, 1)
            cov[j, i] = cov[i, j]
    vectors = np.zeros((d, d))
    values = np.zeros(d)
    jacobi_eigh(cov, vectors, values)
    total = 0.0
    for i in range(d):
        total += max(values[i], 0.0)
    k = d
    acc = 0.0
    for i in range(d):
        acc += max(values[i], 0.0)
        if total <= 0.0 or acc >= params[g, X_VARIANCE] * total:
            k = i + 1
            break
    for i in range(d):
        for j in range(d):
            model[g, i, j] = vectors[i, j]
        model[g, d + 2, i] = values[i]
    state[g, XS_K] = k
    a = params[g, X_ALPHA]
    lam = params[g, X_INPUT_ALPHA]
    ewma = cur[g, CUR_EWMA]
    for i in range(d):
        ewma[i] = model[g, d, i]
    t2s = 0.0
    qs = 0.0
    top_t2 = 0.0
    top_q = 0.0
    for r in range(n):
        if lam < 1.0:
            t2, q = _smoothed_statistics(model, g, d, k, ewma, buf[g, r], lam)
        else:
            t2, q = _statistics(model, g, d, k, buf[g, r])
        t2s = t2 if r == 0 else t2s + a * (t2 - t2s)
        qs = q if r == 0 else qs + a * (q - qs)
        top_t2 = max(top_t2, t2s)
        top_q = max(top_q, qs)
    z = params[g, X_CONFIDENCE_Z]
    if z > 0.0:
        limit_t2, limit_q = control_limits(values, d, k, n, z)
        if not math.isnan(limit_t2):
            top_t2 = limit_t2
        if not math.isnan(limit_q):
            top_q = limit_q
    state[g, XS_THR_T2] = max(top_t2 * params[g, X_FACTOR], 1e-12)
    state[g, XS_THR_Q] = max(top_q * params[g, X_FACTOR], 1e-12)
    state[g, XS_T2] = t2s
    state[g, XS_Q] = qs
    state[g, XS_FITTED] = 1.0


@njit(cache=True, inline="always")
def feed_until_close(cur: F64, sel: I64, rows: I64, cols: I64, values: F64, quality: U8,
                     j: int) -> tuple[int, int]:
    """Puts the batch's good samples from the j-th on into their groups' rows, up to one whose
    tag the row already holds: (its index, its group), that row to be closed first; (the
    batch's length, -1) at its end. Shared by every multivariate kernel (`kernels.mset`)."""
    for k in range(j, sel.shape[0]):
        p = sel[k]
        if quality[p] != 0:
            continue
        g = rows[k]
        c = cols[k]
        if cur[g, CUR_FRESH, c] != 0.0:
            return k, g
        cur[g, CUR_VALUE, c] = values[p]
        cur[g, CUR_FRESH, c] = 1.0
        cur[g, CUR_SEEN, c] = 1.0
    return sel.shape[0], -1


@njit(cache=True, inline="always")
def has_fresh(cur: F64, g: int, d: int) -> bool:
    """Whether the group's row holds a value not yet closed (at a batch's end)."""
    fresh = False
    for i in range(d):
        fresh = fresh or cur[g, CUR_FRESH, i] != 0.0
    return fresh


@njit(cache=True, inline="always")
def end_row(params: F64, state: F64, cur: F64, buf: F64, ep: F64, ctx: F64, g: int) -> int:
    """Ends the group's row: ROW_NONE while a tag has never been seen; else the row goes to
    the context ring and, before the fit, to the warm-up rows (ROW_FIT when that completed
    them, ROW_LEARNING while not); ROW_SCORE once fitted: the caller scores the row."""
    d = int(params[g, X_DIM])
    complete = True
    for i in range(d):
        cur[g, CUR_FRESH, i] = 0.0
        if cur[g, CUR_SEEN, i] == 0.0:
            complete = False
    if not complete:
        return ROW_NONE
    slot = ring_slot(ep, g, ctx.shape[1])
    for i in range(d):
        ctx[g, slot, i] = cur[g, CUR_VALUE, i]
    if state[g, XS_FITTED] != 0.0:
        return ROW_SCORE
    r = int(state[g, XS_N])
    for i in range(d):
        buf[g, r, i] = cur[g, CUR_VALUE, i]
    state[g, XS_N] = r + 1
    return ROW_FIT if r + 1 >= params[g, X_WARMUP] else ROW_LEARNING


@njit(cache=True)
def _close_row(params: F64, state: F64, cur: F64, buf: F64, model: F64, ep: F64, times: I64,
               ctx: F64, g: int, mono_ns: int, time_ns: int) -> None:
    done = end_row(params, state, cur, buf, ep, ctx, g)
    if done == ROW_FIT:
        _fit(params, state, cur, buf, model, g)
    if done != ROW_SCORE:
        return
    d = int(params[g, X_DIM])
    x = cur[g, CUR_VALUE]
    lam = params[g, X_INPUT_ALPHA]
    if lam < 1.0:
        t2, q = _smoothed_statistics(model, g, d, int(state[g, XS_K]), cur[g, CUR_EWMA], x, lam)
    else:
        t2, q = _statistics(model, g, d, int(state[g, XS_K]), x)
    a = params[g, X_ALPHA]
    state[g, XS_T2] += a * (t2 - state[g, XS_T2])
    state[g, XS_Q] += a * (q - state[g, XS_Q])
    score = max(state[g, XS_T2] / state[g, XS_THR_T2], state[g, XS_Q] / state[g, XS_THR_Q])
    if ep[g, EP_STATE] == IDLE and not (score > 1.0):
        ep[g, EP_SCORE] = score  # the common case, kept out of the call
    else:
        episode_step(ep, times, params, g, score, 1.0, math.nan, score > 1.0,
                     score < params[g, X_CLEAR], mono_ns, time_ns)


@njit(cache=True)
def pca_batch(params: F64, state: F64, cur: F64, buf: F64, model: F64, ep: F64, times: I64,
              ctx: F64, sel: I64, rows: I64, cols: I64, values: F64, quality: U8,
              mono_ns: int, time_ns: int) -> None:
    """Streaming PCA monitoring: T² and Q of each row against a model fitted on the first WARMUP
    rows, each EWMA-smoothed and over its threshold; score = the larger.
    Reference: J. E. Jackson and G. S. Mudholkar, Technometrics 21(3), 1979."""
    j, g = feed_until_close(cur, sel, rows, cols, values, quality, 0)
    while g >= 0:
        _close_row(params, state, cur, buf, model, ep, times, ctx, g, mono_ns, time_ns)
        j, g = feed_until_close(cur, sel, rows, cols, values, quality, j)
    for j in range(sel.shape[0]):
        g = rows[j]
        if has_fresh(cur, g, int(params[g, X_DIM])):
            _close_row(params, state, cur, buf, model, ep, times, ctx, g, mono_ns, time_ns)


def warm_up() -> None:
    """Compile (or load from the cache) the PCA kernels: a 2-tag group learning on 2 rows."""
    from agent.detect.kernels.episode import new_episodes

    params = np.zeros((1, PCA_PARAMS))
    params[0, X_DIM], params[0, X_WARMUP], params[0, X_VARIANCE] = 2, 2, 0.9
    params[0, X_ALPHA], params[0, X_FACTOR], params[0, X_CLEAR] = 1.0, 1.0, 1.0
    params[0, X_INPUT_ALPHA] = 1.0
    state = np.zeros((1, PCA_STATE))
    cur, buf, model = np.zeros((1, CUR_PLANES, 2)), np.zeros((1, 2, 2)), np.zeros((1, 5, 2))
    ep, times = new_episodes(1)
    ctx = np.zeros((1, 1, 2))
    sel, rows, cols = np.arange(2), np.zeros(2, dtype=np.int64), np.arange(2)
    quality = np.zeros(2, dtype=np.uint8)
    for i in range(3):
        pca_batch(params, state, cur, buf, model, ep, times, ctx, sel, rows, cols,
                  np.array([float(i), float(i * i)]), quality, i, i)
