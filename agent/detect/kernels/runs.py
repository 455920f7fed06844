"""A batch folded row by row: runs, and a row's episode fields held in locals over its run.

The univariate kernels take a batch as runs: row `runs[k, RUN_ROW]` is fed the batch
positions `RUN_FIRST + i * RUN_STRIDE` for i < `RUN_COUNT`. Runs come in ascending row
order, a row's runs in batch order (irregular positions get one run per sample,
`anomaly._runs`), and rows never read each other's state: folding runs computes what
folding sample by sample does, with a row's parameters, statistics and episode fields in
registers over its run. A kernel gathers a run's GOOD samples (`run_gather`), folds them,
and writes the context ring once (`run_close`). numba counts references to a compiled
function's array arguments on every call, hence the inlined helpers.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.detect.kernels.episode import (
    EP_AFTER_DONE,
    EP_AFTER_LEFT,
    EP_ENDED,
    EP_RING_N,
    EP_RING_POS,
    EP_SCORE,
    EP_STARTED,
    EP_STATE,
    episode_step,
)
from agent.detect.kernels.jit import njit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

# Columns of a runs array, shape (runs, RUN_FIELDS), int64.
RUN_ROW, RUN_FIRST, RUN_STRIDE, RUN_COUNT = range(4)
RUN_FIELDS = 4


@njit(cache=True, inline="always")
def run_gather(runs: I64, k: int, values: F64, quality: U8, buf: F64, good: int) -> int:
    """Copies run k's GOOD samples into `buf`, in order; returns how many. Loads only, no chain
    between samples, so the processor fetches many at once. When run k reads run k - 1's
    samples (a tag's level and rate rows), `buf` already holds them: `good` is returned."""
    first, stride, count = runs[k, RUN_FIRST], runs[k, RUN_STRIDE], runs[k, RUN_COUNT]
    # Without short-circuits (runs[-1] is a row like any when k == 0): an inlined helper
    # that branches on an array it was given counts that array's references.
    fresh = (k == 0) | (first != runs[k - 1, RUN_FIRST]) | (stride != runs[k - 1, RUN_STRIDE]) \
        | (count != runs[k - 1, RUN_COUNT])
    if fresh:
        good = 0
        for i in range(count):
            p = first + i * stride
            if quality[p] == 0:
                buf[good] = values[p]
                good += 1
    return good


@njit(cache=True)
def run_open(ep: F64, row: int) -> tuple[float, float, float]:
    """The row's episode state, score and context samples still wanted after an end."""
    return ep[row, EP_STATE], ep[row, EP_SCORE], ep[row, EP_AFTER_LEFT]


@njit(cache=True, inline="always")
def run_step(ep: F64, times: I64, params: F64, row: int, left: float, score: float,
             threshold: float, value: float, over: bool, under: bool, mono_ns: int,
             time_ns: int, pushed: int) -> tuple[float, float]:
    """`episode_step` from a run's locals: takes AFTER_LEFT, returns the row's state and
    AFTER_LEFT after the step. `pushed`: the run's samples up to this one (included), counted
    into RING_N for the step, since `run_close` pushes them only at the run's end."""
    ep[row, EP_AFTER_LEFT] = left
    ring_n = ep[row, EP_RING_N]
    ep[row, EP_RING_N] = ring_n + pushed
    episode_step(ep, times, params, row, score, threshold, value, over, under, mono_ns, time_ns)
    ep[row, EP_RING_N] = ring_n
    return ep[row, EP_STATE], ep[row, EP_AFTER_LEFT]


@njit(cache=True, inline="always")
def count_context(left: float, done: float) -> tuple[float, float]:
    """One more sample of the context an ended episode still wants: (left, done) after it,
    `done` counting the episodes whose context is now complete."""
    if left > 0.0:
        left -= 1.0
        if left == 0.0:
            done += 1.0
    return left, done


@njit(cache=True, inline="always")
def run_close(ep: F64, ctx: F64, buf: F64, row: int, score: float, left: float, done: float,
              good: int, context: float) -> float:
    """Writes back a run's locals and pushes `buf[:good]` into the row's context ring (at most its
    C slots); returns STARTED + ENDED + AFTER_DONE (0: no event to make). A run with no start,
    end or context wanted writes only its last `context` samples, all a later event reads."""
    opened_left = ep[row, EP_AFTER_LEFT]
    ep[row, EP_SCORE] = score
    ep[row, EP_AFTER_LEFT] = left
    ep[row, EP_AFTER_DONE] += done
    ep[row, EP_RING_N] += good
    raised = ep[row, EP_STARTED] + ep[row, EP_ENDED] + ep[row, EP_AFTER_DONE]
    size = ctx.shape[1]
    kept = min(good, size)
    if raised == 0.0 and opened_left == 0.0 and left == 0.0 and kept > context:
        kept = int(context)
    slot = int(ep[row, EP_RING_POS]) + good - kept  # where the first sample kept goes
    if slot >= size:  # a run longer than the ring
        slot %= size
    for i in range(good - kept, good):
        ctx[row, slot] = buf[i]
        slot = slot + 1 if slot + 1 < size else 0
    ep[row, EP_RING_POS] = float(slot)
    return float(raised)
