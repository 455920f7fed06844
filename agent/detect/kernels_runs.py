"""A batch folded row by row: runs, and a row's episode fields held in locals over its run.

The univariate kernels (`kernels_univariate`) take a batch as runs rather than sample by
sample: row `runs[k, RUN_ROW]` is fed the batch positions `RUN_FIRST + i * RUN_STRIDE` for
i < `RUN_COUNT`, in batch order. A row's runs are consecutive and in batch order (a row
whose positions are no arithmetic progression gets one run per sample), so folding runs
computes exactly what folding the batch sample by sample does: rows never read each
other's state. What it saves on a burst (100 samples per tag in the benchmark): the row's
parameters, statistics and episode fields stay in registers over its run instead of going
through 2-D arrays on every sample, each branch on the row's parameters is taken once per
run, and no index array is read per sample. A kernel first copies a run's GOOD samples
into a buffer (`run_gather`), then folds them; the context ring is written once per batch
(`ring_fill`).

numba counts references to the arrays a compiled function takes: a call with arrays that
branches costs atomic increments and decrements on every call, more than a whole quiet
sample. So what runs per sample is inlined (`run_gather`, `run_step`); `run_open` and
`run_close` run once per run, `run_buffer` and `ring_fill` once per batch.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.detect.jit import njit
from agent.detect.kernels_episode import (
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

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

# Columns of a runs array, shape (runs, RUN_FIELDS), int64.
RUN_ROW, RUN_FIRST, RUN_STRIDE, RUN_COUNT = range(4)
RUN_FIELDS = 4


@njit(cache=True)
def run_buffer(runs: I64) -> F64:
    """Room for the longest run's samples (`run_gather`): one allocation per batch."""
    longest = 0
    for k in range(runs.shape[0]):
        longest = max(longest, runs[k, RUN_COUNT])
    return np.empty(longest)


@njit(cache=True, inline="always")
def run_gather(runs: I64, k: int, values: F64, quality: U8, buf: F64) -> int:
    """Copies run k's GOOD samples into `buf`, in order; returns how many. A loop of loads
    only, no arithmetic chained from one sample to the next: the processor fetches many of
    a run's strided samples at once, where the statistics that follow wait for each."""
    first, stride = runs[k, RUN_FIRST], runs[k, RUN_STRIDE]
    good = 0
    for i in range(runs[k, RUN_COUNT]):
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
             time_ns: int) -> tuple[float, float]:
    """`episode_step` from a run's locals: hands it AFTER_LEFT (an end sets it) and returns
    the row's state and AFTER_LEFT after the step."""
    ep[row, EP_AFTER_LEFT] = left
    episode_step(ep, times, params, row, score, threshold, value, over, under, mono_ns, time_ns)
    return ep[row, EP_STATE], ep[row, EP_AFTER_LEFT]


@njit(cache=True)
def run_close(ep: F64, row: int, size: int, score: float, left: float, done: float,
              good: int) -> float:
    """Writes back a run's locals: its score, AFTER_LEFT, the AFTER_DONE it counted, and the
    ring count and position advanced by its `good` samples (`ring_fill` writes them once the
    batch is folded). Returns the row's STARTED + ENDED + AFTER_DONE: 0 when there is no
    event to make."""
    ep[row, EP_SCORE] = score
    ep[row, EP_AFTER_LEFT] = left
    ep[row, EP_AFTER_DONE] += done
    ep[row, EP_RING_N] += good
    pos = int(ep[row, EP_RING_POS]) + good
    if pos >= size:
        pos %= size
    ep[row, EP_RING_POS] = float(pos)
    return float(ep[row, EP_STARTED] + ep[row, EP_ENDED] + ep[row, EP_AFTER_DONE])


@njit(cache=True)
def ring_fill(ep: F64, ctx: F64, runs: I64, values: F64, quality: U8) -> None:
    """The context rings (rows, C) after a batch: each row's last C good samples, written
    backwards from its ring position, once per batch instead of every sample as it comes
    (only the last C of a row's samples in a batch survive in its ring anyway)."""
    size = ctx.shape[1]
    row = -1
    slot = 0
    written = 0
    for k in range(runs.shape[0] - 1, -1, -1):
        if runs[k, RUN_ROW] != row:  # the row's last run: start from its ring position
            row = runs[k, RUN_ROW]
            slot = int(ep[row, EP_RING_POS])
            written = 0
        first, stride = runs[k, RUN_FIRST], runs[k, RUN_STRIDE]
        i = runs[k, RUN_COUNT] - 1
        while i >= 0 and written < size:
            p = first + i * stride
            if quality[p] == 0:
                slot = slot - 1 if slot > 0 else size - 1
                ctx[row, slot] = values[p]
                written += 1
            i -= 1
