"""numba kernels: pure functions over arrays, their state passed in as arrays.

No Python objects and no allocation inside; one call per poll batch covers all
of its tags. Compiled with cache=True: the cache lives in NUMBA_CACHE_DIR (the
agent points it into its state directory) so that a restart does not compile.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import numpy.typing as npt

from agent.detect.jit import njit
from agent.detect.kernels_counter import COUNTER_FIELDS, counter_step

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# Column of each statistic in a window state array of shape (tags, WINDOW_FIELDS).
# W_INCREASE and W_RESETS are used by counter tags only (see kernels_counter).
W_COUNT, W_BAD, W_MEAN, W_M2, W_MIN, W_MAX, W_LAST, W_INCREASE, W_RESETS = range(9)
WINDOW_FIELDS = 9


@njit(cache=True)
def window_accumulate(
    state: F64, index: I64, values: F64, quality: npt.NDArray[np.uint8],
    counters: F64, modulus: F64,
) -> None:
    """Fold one batch into per-tag window statistics (Welford's online mean and variance).

    Reference: B. P. Welford, "Note on a method for calculating corrected sums of
    squares and products", Technometrics 4(3), 1962. Samples whose quality is not
    GOOD (0) are only counted as bad: they never enter the statistics.

    Counter tags (`modulus[row]` not NaN; <= 0 for a counter that does not wrap) also
    add their increase and resets (`counter_step`); `counters` is their (tags,
    COUNTER_FIELDS) state, which outlives the window.
    """
    for j in range(index.shape[0]):
        row = index[j]
        if quality[j] != 0:
            state[row, W_BAD] += 1.0
            continue
        x = values[j]
        n = state[row, W_COUNT] + 1.0
        state[row, W_COUNT] = n
        delta = x - state[row, W_MEAN]
        state[row, W_MEAN] += delta / n
        state[row, W_M2] += delta * (x - state[row, W_MEAN])
        if n == 1.0 or x < state[row, W_MIN]:
            state[row, W_MIN] = x
        if n == 1.0 or x > state[row, W_MAX]:
            state[row, W_MAX] = x
        state[row, W_LAST] = x
        if not np.isnan(modulus[row]):
            increase, reset = counter_step(counters, row, x, modulus[row])
            state[row, W_INCREASE] += increase
            if reset:
                state[row, W_RESETS] += 1.0


def warm_up(kinds: Collection[str] | None = None) -> None:
    """Load every kernel from the cache (or compile it) now, on tiny arrays: the window
    kernel, and those of the detector `kinds` given (all of them when None).

    Called before the agent says READY (and before a reload starts devices): the first
    poll is then never delayed by a compilation, and a numba that cannot compile fails
    the start, not the first sample. Only the kinds configured: loading a kernel from the
    cache costs ~0.2 s of CPU (and of the GIL) that the polling event loop shares.
    """
    from agent.detect import kernels_band, kernels_pca, kernels_univariate

    state = np.zeros((1, WINDOW_FIELDS), dtype=np.float64)
    window_accumulate(state, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float64),
                      np.zeros(1, dtype=np.uint8), np.zeros((1, COUNTER_FIELDS)),
                      np.zeros(1, dtype=np.float64))
    from agent.detect.kernels_machine import warm_up_machine

    warm_up_machine()
    wanted = set(KINDS if kinds is None else kinds)
    kernels_univariate.warm_up(wanted)
    if "pca" in wanted:
        kernels_pca.warm_up()
    if "band_rms" in wanted:
        kernels_band.warm_up()


KINDS = ("limits", "zscore", "drift", "stuck", "rms", "pca", "band_rms")
"""Every detector kind that has kernels."""
