"""Machine state from one signal (power or current): off / idle / running / overload.

Levels are ordered; thresholds `t[1] < t[2] < t[3]` (idle, running, overload) are the
values above which a level is entered. Hysteresis `h`: a level once entered is kept
until the signal falls below `t[k] - h`, so a signal hovering at a threshold does not
chatter. The minimum dwell time is applied by the caller (`kernels.machine`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.detect.kernels.jit import njit

F64 = npt.NDArray[np.float64]

UNKNOWN, OFF, IDLE, RUNNING, OVERLOAD = -1, 0, 1, 2, 3
STATE_NAMES = ("off", "idle", "running", "overload")


@njit(cache=True)
def desired_level(x: float, current: int, thresholds: F64, hysteresis: float) -> int:
    """The level the signal `x` asks for, given the level in force (Schmitt trigger with
    several thresholds; e.g. Horowitz & Hill, The Art of Electronics, 3rd ed., 4.3.2).

    `thresholds` holds the entry thresholds of idle, running and overload (`inf` when
    a level is not used).
    """
    up = 0  # the highest level whose entry threshold x exceeds
    keep = 0  # the highest level x may stay in (threshold minus hysteresis)
    for k in range(3):
        if x > thresholds[k]:
            up = k + 1
        if x >= thresholds[k] - hysteresis:
            keep = k + 1
    if up > current:
        return up
    if keep >= current:
        return current
    return keep
