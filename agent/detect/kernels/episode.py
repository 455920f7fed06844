"""The episode state machine every anomaly kernel shares: hysteresis, minimum durations, peak.

A row of a detector (one tag of a rule, or one group of tags) is IDLE, PENDING (over its
threshold, not yet for `min_ns`), ACTIVE, or CLEARING (back under its clear level, not yet
for `clear_ns`). Kernels call `episode_step` once per scored sample; the Python side
reads the STARTED and ENDED counters after the call and turns them into events. Times
are int64 nanoseconds (a float64 UTC time would lose ~0.25 µs), the rest float64.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.detect.kernels.jit import njit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

IDLE, PENDING, ACTIVE, CLEARING = 0.0, 1.0, 2.0, 3.0

# Parameter columns every kernel's params array starts with.
P_MIN_NS, P_CLEAR_NS, P_AFTER = range(3)

# Columns of the float64 episode array, shape (rows, EP_FIELDS). EP_START_RING and
# EP_END_RING are EP_RING_N when the episode was recognised and when it ended: the context
# before and after is taken from there, not from the newest samples, which in a burst (many
# samples of a tag in one batch) may have come after the moment.
(EP_STATE, EP_SCORE, EP_PEAK, EP_PEAK_VALUE, EP_STARTED, EP_ENDED, EP_ENDED_PEAK,
 EP_ENDED_PEAK_VALUE, EP_RING_N, EP_AFTER_LEFT, EP_AFTER_DONE, EP_THRESHOLD, EP_RING_POS,
 EP_START_RING, EP_END_RING) = range(15)
EP_FIELDS = 15

# Columns of the int64 time array, shape (rows, T_FIELDS): UTC (`_TIME`) and monotonic (`_MONO`).
(T_PEND_TIME, T_PEND_MONO, T_PEAK_TIME, T_CLEAR_TIME, T_CLEAR_MONO, T_ENDED_START_TIME,
 T_ENDED_START_MONO, T_ENDED_PEAK_TIME, T_ENDED_END_TIME, T_ENDED_END_MONO) = range(10)
T_FIELDS = 10


def new_episodes(rows: int) -> tuple[F64, I64]:
    """Fresh episode arrays: every row idle, scores NaN (warming up)."""
    ep = np.zeros((rows, EP_FIELDS), dtype=np.float64)
    ep[:, EP_SCORE] = np.nan
    return ep, np.zeros((rows, T_FIELDS), dtype=np.int64)


@njit(cache=True, inline="always")
def episode_step(ep: F64, times: I64, params: F64, row: int, score: float, threshold: float,
                 value: float, over: bool, under: bool, mono_ns: int, time_ns: int) -> None:
    """One sample of a row through IDLE -> PENDING -> ACTIVE -> CLEARING -> IDLE: a Schmitt trigger
    with minimum on/off durations (`min_ns`, `clear_ns`). The sample must already be in the
    context ring (`ring_slot` or `run_step`). Inlined: as a call, its arrays' reference counts
    would cost more than the step."""
    ep[row, EP_SCORE] = score
    ep[row, EP_THRESHOLD] = threshold
    state = ep[row, EP_STATE]
    if state == IDLE:
        if not over:
            return
        ep[row, EP_STATE] = PENDING
        ep[row, EP_PEAK] = score
        ep[row, EP_PEAK_VALUE] = value
        times[row, T_PEND_TIME] = time_ns
        times[row, T_PEND_MONO] = mono_ns
        times[row, T_PEAK_TIME] = time_ns
        state = PENDING
    ep[row, EP_THRESHOLD] = threshold
    if score > ep[row, EP_PEAK]:
        ep[row, EP_PEAK] = score
        ep[row, EP_PEAK_VALUE] = value
        times[row, T_PEAK_TIME] = time_ns
    if state == PENDING:
        if not over:
            ep[row, EP_STATE] = IDLE
            return
        if mono_ns - times[row, T_PEND_MONO] >= params[row, P_MIN_NS]:
            ep[row, EP_STATE] = ACTIVE
            ep[row, EP_STARTED] += 1.0
            ep[row, EP_START_RING] = ep[row, EP_RING_N]
            state = ACTIVE
        else:
            return
    if state == ACTIVE:
        if not under:
            return
        ep[row, EP_STATE] = CLEARING
        times[row, T_CLEAR_TIME] = time_ns
        times[row, T_CLEAR_MONO] = mono_ns
        state = CLEARING
    # CLEARING
    if not under:
        ep[row, EP_STATE] = ACTIVE
    elif mono_ns - times[row, T_CLEAR_MONO] >= params[row, P_CLEAR_NS]:
        ep[row, EP_STATE] = IDLE
        ep[row, EP_ENDED] += 1.0
        ep[row, EP_END_RING] = ep[row, EP_RING_N]
        ep[row, EP_ENDED_PEAK] = ep[row, EP_PEAK]
        ep[row, EP_ENDED_PEAK_VALUE] = ep[row, EP_PEAK_VALUE]
        times[row, T_ENDED_START_TIME] = times[row, T_PEND_TIME]
        times[row, T_ENDED_START_MONO] = times[row, T_PEND_MONO]
        times[row, T_ENDED_PEAK_TIME] = times[row, T_PEAK_TIME]
        times[row, T_ENDED_END_TIME] = times[row, T_CLEAR_TIME]
        times[row, T_ENDED_END_MONO] = times[row, T_CLEAR_MONO]
        # The context after the end: `after` more samples (pushed after this one), then done.
        ep[row, EP_AFTER_LEFT] = params[row, P_AFTER]
        if params[row, P_AFTER] == 0.0:
            ep[row, EP_AFTER_DONE] += 1.0


@njit(cache=True, inline="always")
def ring_slot(ep: F64, row: int, size: int) -> int:
    """The slot of the context ring where the row's next sample goes; counts the samples
    still wanted after an ended episode (EP_AFTER_DONE is raised when they are all in)."""
    ep[row, EP_RING_N] += 1.0
    left = ep[row, EP_AFTER_LEFT]
    if left > 0.0:
        ep[row, EP_AFTER_LEFT] = left - 1.0
        if left == 1.0:
            ep[row, EP_AFTER_DONE] += 1.0
    slot = int(ep[row, EP_RING_POS])  # == RING_N mod size, without a division per sample
    ep[row, EP_RING_POS] = 0.0 if slot + 1 >= size else slot + 1.0
    return slot
