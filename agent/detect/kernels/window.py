"""The window kernel: per-tag running statistics of one aggregation window.

One call per poll batch covers all of its tags; state lives in a (tags, WINDOW_FIELDS)
array owned by `agent.detect.window.WindowAggregator`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.detect.kernels.counter import counter_step
from agent.detect.kernels.jit import njit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# Column of each statistic in a window state array of shape (tags, WINDOW_FIELDS).
# W_INCREASE and W_RESETS are used by counter tags only (see kernels.counter).
W_COUNT, W_BAD, W_MEAN, W_M2, W_MIN, W_MAX, W_LAST, W_INCREASE, W_RESETS = range(9)
WINDOW_FIELDS = 9


@njit(cache=True)
def window_accumulate(
    state: F64, index: I64, values: F64, quality: npt.NDArray[np.uint8],
    counters: F64, modulus: F64,
) -> None:
    """Fold one batch into per-tag window statistics (Welford, Technometrics 4(3), 1962); a
    sample not GOOD (0) only counts as bad. Counter tags (`modulus[row]` not NaN; <= 0: no
    wrap) also add their increase and resets, from `counters`, which outlives the window."""
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
