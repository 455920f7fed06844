"""numba kernel of `band_rms`: the RMS of a fast signal in frequency bands, from a short FFT.

numba's nopython mode has no `np.fft`, so an iterative radix-2 FFT is written here, and a
real FFT of N samples is one complex FFT of N/2 points. Twiddles, bit reversal and window
are computed once per rule in Python (`fft_tables`, `window`), one row per rule
(`G_TABLE`). A *signal row* per tag holds the ring of its last N samples (`ring`: signal
rows x largest N); a *band row* per band is an episode row (`kernels.episode`) with its
learned level. `work` (3, largest N / 2 + 1) is scratch shared by every block. A sample not
GOOD (0) or not finite ends the contiguous run: a block never spans a gap.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from agent.detect.kernels.episode import EP_SCORE, EP_STATE, IDLE, episode_step, ring_slot
from agent.detect.kernels.jit import njit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

# Signal rows: block length, hop, which rule's tables, its band rows, whether consecutive
# batches continue one stream, and the Parseval and window normalization 1 / (N * S2).
G_N, G_HOP, G_TABLE, G_FIRST_BAND, G_BANDS, G_CONTINUOUS, G_NORM = range(7)
SIGNAL_PARAMS = 7
# Ring write position, good samples in a row since the last gap (capped at N), samples
# since the last block, monotonic time of the batch the last sample came in.
GS_POS, GS_FILL, GS_SINCE, GS_BATCH_MONO = range(4)
SIGNAL_STATE = 4

# Band rows start with the episode columns (P_MIN_NS, P_CLEAR_NS, P_AFTER); bins are
# one-sided DFT indices, first and last inclusive.
B_FIRST_BIN, B_LAST_BIN, B_MAX_RMS, B_MAX_RATIO, B_WARMUP, B_ALPHA, B_CLEAR_FRACTION, \
    B_MIN_LIMIT = range(3, 11)
BAND_PARAMS = 11
BS_BLOCKS, BS_MS, BS_LEARN_SUM, BS_BASE = range(4)
BAND_STATE = 4

W_RE, W_IM, W_POWER = range(3)
"""Rows of the scratch array `work`."""

WINDOWS = ("hann", "hamming", "rectangular")


def window(name: str, n: int) -> F64:
    """The periodic ("DFT-even") form of the window, as Heinzel et al. recommend for
    spectral analysis: w[j] for j = 0..n-1 over one period of n."""
    phase = 2.0 * np.pi * np.arange(n) / n
    if name == "hann":
        return 0.5 - 0.5 * np.cos(phase)
    if name == "hamming":
        return 0.54 - 0.46 * np.cos(phase)
    if name == "rectangular":
        return np.ones(n)
    raise ValueError(f"unknown window {name!r} (one of {', '.join(WINDOWS)})")


def fft_tables(n: int) -> tuple[F64, F64, I64]:
    """Tables of a real FFT of n samples (a power of two, at least 4): e^(-2 pi i k / n) for
    k < n/2 as real and imaginary parts, and the bit reversal of indices below n/2 (the
    complex FFT is n/2 points long)."""
    if n < 4 or n & (n - 1):
        raise ValueError(f"a real FFT needs a power of two of at least 4 samples, not {n}")
    k = np.arange(n // 2)
    angle = -2.0 * np.pi * k / n
    m = n // 2
    bits = m.bit_length() - 1
    reversed_ = np.zeros(m, dtype=np.int64)
    for i in range(m):
        reversed_[i] = int(format(i, f"0{bits}b")[::-1], 2) if bits else 0
    return np.cos(angle), np.sin(angle), reversed_


@njit(cache=True)
def fft_radix2(re: F64, im: F64, m: int, bitrev: I64, tw_re: F64, tw_im: F64,
               stride: int) -> None:
    """In place, the DFT X[k] = sum x[j] e^(-2 pi i jk/m) of re[:m] + i im[:m] (m a power of two);
    `tw_*[k * stride]` is e^(-2 pi i k / m), so a longer transform's tables serve with a stride.
    Iterative radix-2 decimation in time: Cooley and Tukey, Math. Comp. 19, 1965."""
    for i in range(m):
        j = bitrev[i]
        if j > i:
            re[i], re[j] = re[j], re[i]
            im[i], im[j] = im[j], im[i]
    size = 2
    while size <= m:
        half = size // 2
        step = (m // size) * stride
        for k in range(half):
            wr = tw_re[k * step]
            wi = tw_im[k * step]
            for a in range(k, m, size):
                b = a + half
                vr = re[b] * wr - im[b] * wi
                vi = re[b] * wi + im[b] * wr
                re[b] = re[a] - vr
                im[b] = im[a] - vi
                re[a] += vr
                im[a] += vi
        size *= 2


@njit(cache=True)
def rfft_power(re: F64, im: F64, power: F64, n: int, bitrev: I64, tw_re: F64,
               tw_im: F64) -> None:
    """|X[k]|^2, k = 0..n/2, of the DFT of n real samples given as re[j] = x[2j], im[j] = x[2j+1]
    (both overwritten): one n/2-point complex FFT split into even and odd halves,
    X[k] = E[k] + e^(-2 pi i k/n) O[k]. Press et al., Numerical Recipes in C, 2nd ed., 12.3."""
    m = n // 2
    # Stride n // m (2): computed, so that numba compiles fft_radix2 for a plain int and the
    # ahead-of-time build exports it (a literal 2 would make a specialisation it skips).
    fft_radix2(re, im, m, bitrev, tw_re, tw_im, n // m)
    power[0] = (re[0] + im[0]) ** 2
    power[m] = (re[0] - im[0]) ** 2
    for k in range(1, m):
        c = m - k
        er = 0.5 * (re[k] + re[c])
        ei = 0.5 * (im[k] - im[c])
        orr = 0.5 * (im[k] + im[c])
        oi = -0.5 * (re[k] - re[c])
        xr = er + tw_re[k] * orr - tw_im[k] * oi
        xi = ei + tw_re[k] * oi + tw_im[k] * orr
        power[k] = xr * xr + xi * xi


@njit(cache=True)
def _block(gp: F64, ring: F64, bp: F64, bs: F64, ep: F64, times: I64, windows: F64,
           tw_re: F64, tw_im: F64, bitrev: I64, work: F64, g: int, start: int, mono_ns: int,
           time_ns: int) -> None:
    """The last N samples of signal row g, oldest at ring position `start`: mean removed,
    windowed, transformed; then each of its bands' mean square, level and episode."""
    n = int(gp[g, G_N])
    t = int(gp[g, G_TABLE])
    mask = n - 1
    total = 0.0
    for i in range(n):
        total += ring[g, i]
    mean = total / n
    square = 0.0
    re = work[W_RE]
    im = work[W_IM]
    for j in range(n // 2):
        a = ring[g, (start + 2 * j) & mask] - mean
        b = ring[g, (start + 2 * j + 1) & mask] - mean
        square += a * a + b * b
        re[j] = windows[t, 2 * j] * a
        im[j] = windows[t, 2 * j + 1] * b
    broadband = math.sqrt(square / n)
    power = work[W_POWER]
    rfft_power(re, im, power, n, bitrev[t], tw_re[t], tw_im[t])
    norm = gp[g, G_NORM]
    m = n // 2
    first = int(gp[g, G_FIRST_BAND])
    for row in range(first, first + int(gp[g, G_BANDS])):
        total = 0.0
        for k in range(int(bp[row, B_FIRST_BIN]), int(bp[row, B_LAST_BIN]) + 1):
            # One-sided: every bin but DC and Nyquist stands for its negative twin too.
            total += power[k] if k == 0 or k == m else 2.0 * power[k]
        ms = norm * total
        blocks = bs[row, BS_BLOCKS] + 1.0
        bs[row, BS_BLOCKS] = blocks
        if blocks == 1.0:
            bs[row, BS_MS] = ms
        else:
            bs[row, BS_MS] += bp[row, B_ALPHA] * (ms - bs[row, BS_MS])
        warmup = bp[row, B_WARMUP]
        if blocks <= warmup:
            bs[row, BS_LEARN_SUM] += ms
            if blocks == warmup:
                bs[row, BS_BASE] = math.sqrt(bs[row, BS_LEARN_SUM] / warmup)
        rms = math.sqrt(bs[row, BS_MS])
        limit = bp[row, B_MAX_RMS]
        if blocks >= warmup and bs[row, BS_BASE] > 0.0:
            limit = min(limit, max(bp[row, B_MIN_LIMIT], bp[row, B_MAX_RATIO] * bs[row, BS_BASE]))
        elif math.isinf(limit):
            continue
        if ep[row, EP_STATE] == IDLE and not (rms > limit):
            ep[row, EP_SCORE] = rms  # the common case, kept out of the call
        else:
            episode_step(ep, times, bp, row, rms, limit, broadband, rms > limit,
                         rms < limit * bp[row, B_CLEAR_FRACTION], mono_ns, time_ns)


@njit(cache=True)
def band_rms_batch(gp: F64, gs: F64, ring: F64, bp: F64, bs: F64, ep: F64, times: I64,
                   ctx: F64, windows: F64, tw_re: F64, tw_im: F64, bitrev: I64, work: F64,
                   sel: I64, rows: I64, values: F64, quality: U8, mono_ns: int,
                   time_ns: int) -> None:
    """Band RMS of every band of each signal row the batch feeds (`sel[j]`: batch position,
    `rows[j]`: signal row); a block once the ring holds N contiguous good samples, every `hop`.
    Parseval with the window's power correction, ms = 2 sum |X[k]|^2 / (N S2), S2 = sum w^2:
    Heinzel, Rüdiger and Schilling, "Spectrum and spectral density estimation by the DFT", 2002."""
    size = ctx.shape[1]
    for j in range(sel.shape[0]):
        p = sel[j]
        g = rows[j]
        if gp[g, G_CONTINUOUS] == 0.0 and gs[g, GS_BATCH_MONO] != mono_ns:
            # A batch of another time is a new capture: the last one's tail is not its past.
            gs[g, GS_FILL] = 0.0
            gs[g, GS_SINCE] = 0.0
        gs[g, GS_BATCH_MONO] = mono_ns
        x = values[p]
        if quality[p] != 0 or not math.isfinite(x):
            gs[g, GS_FILL] = 0.0
            gs[g, GS_SINCE] = 0.0
            continue
        first = int(gp[g, G_FIRST_BAND])
        for row in range(first, first + int(gp[g, G_BANDS])):
            ctx[row, ring_slot(ep, row, size)] = x
        n = int(gp[g, G_N])
        pos = int(gs[g, GS_POS])
        ring[g, pos] = x
        pos = (pos + 1) & (n - 1)
        gs[g, GS_POS] = pos
        fill = min(gs[g, GS_FILL] + 1.0, float(n))
        gs[g, GS_FILL] = fill
        since = gs[g, GS_SINCE] + 1.0
        if fill >= n and since >= gp[g, G_HOP]:
            since = 0.0
            _block(gp, ring, bp, bs, ep, times, windows, tw_re, tw_im, bitrev, work, g, pos,
                   mono_ns, time_ns)
        gs[g, GS_SINCE] = since


def warm_up() -> None:
    """Compile (or load from the cache) the band kernel: one 8-sample block of one band, with
    the argument types the detector passes."""
    from agent.detect.kernels.episode import new_episodes

    n = 8
    gp = np.zeros((1, SIGNAL_PARAMS))
    gp[0, G_N], gp[0, G_HOP], gp[0, G_BANDS], gp[0, G_NORM] = n, n, 1, 1.0
    bp = np.zeros((1, BAND_PARAMS))
    bp[0, B_LAST_BIN], bp[0, B_MAX_RMS], bp[0, B_MAX_RATIO] = 1, np.inf, 3.0
    bp[0, B_WARMUP], bp[0, B_ALPHA], bp[0, B_CLEAR_FRACTION] = 1, 1.0, 0.9
    tw_re, tw_im, bitrev = fft_tables(n)
    ep, times = new_episodes(1)
    sel = np.arange(n, dtype=np.int64)
    band_rms_batch(gp, np.zeros((1, SIGNAL_STATE)), np.zeros((1, n)), bp,
                   np.zeros((1, BAND_STATE)), ep, times, np.zeros((1, 1)),
                   window("hann", n).reshape(1, n), tw_re.reshape(1, -1),
                   tw_im.reshape(1, -1), bitrev.reshape(1, -1), np.zeros((3, n // 2 + 1)), sel,
                   np.zeros(n, dtype=np.int64), np.sin(sel * 1.0), np.zeros(n, dtype=np.uint8),
                   1, 1)
