"""A batch folded row by row: runs, and a row's episode fields held in locals over its run.

The univariate kernels (`kernels.univariate`) take a batch as runs rather than sample by
sample: row `runs[k, RUN_ROW]` is fed the batch positions `RUN_FIRST + i * RUN_STRIDE` for
i < `RUN_COUNT`, in batch order. Runs come in ascending row order, a row's runs one after
the other in batch order (a row whose positions are no arithmetic progression gets one run
per sample: `anomaly._runs` makes them once per tag tuple), so folding runs
computes exactly what folding the batch sample by sample does: rows never read each
other's state. What it saves on a burst (100 samples per tag in the benchmark): the row's
parameters, statistics and episode fields stay in registers over its run instead of going
through 2-D arrays on every sample, each branch on the row's parameters is taken once per
run, and no index array is read per sample. A kernel first copies a run's GOOD samples
into a buffer (`run_gather`), then folds them; the context ring is written once per run,
with the last of them (`run_close`).

numba counts references to the arrays a compiled function takes: a call with arrays that
branches costs atomic increments and decrements on every call, more than a whole quiet
sample. So the helpers a kernel calls per sample or per run are inlined (`run_gather`,
`run_step`, `run_close`); `run_open` only reads.
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
    """Copies run k's GOOD samples into `buf`, in order; returns how many. A loop of loads
    only, no arithmetic chained from one sample to the next: the processor fetches many of
    a run's strided samples at once, where the statistics that follow wait for each. When
    run k reads the very samples run k - 1 did (a tag's two rows of one rule: a limit's
    level and rate), `buf` already holds them: `good`, the count gathered then, is returned."""
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
    """`episode_step` from a run's locals: hands it AFTER_LEFT (an end sets it) and returns
    the row's state and AFTER_LEFT after the step. `pushed`: the run's samples for the
    context ring up to this one (included); `run_close` pushes them only at the run's end,
    so the ring count the step records where an episode starts or ends (the context around
    it, in a burst) is RING_N plus those."""
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
    """Writes back a run's locals: its score, AFTER_LEFT and the AFTER_DONE it counted, and
    pushes its `good` samples (`buf[:good]`) into the row's context ring (rows, C) at once:
    only the last C of them are written, where pushing each in turn would leave them.
    Returns the row's STARTED + ENDED + AFTER_DONE: 0 when there is no event to make.

    A ring grown for bursts (C = `context` + the burst's length - 1, `context_ring`) holds
    the samples around an episode's start or end inside the run; a run in which no episode
    started or ended and no context after an end was wanted writes only its last `context`
    samples, all a later event can read (the samples before a later start)."""
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
