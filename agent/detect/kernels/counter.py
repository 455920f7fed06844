"""The counter kernel: the increase of a cumulative value across rollover and reset.

Used by the window aggregates (a counter tag's `increase`) and the machine detector (meter
energy, cycle counts). A rise is the increase. With a modulus M (where the register wraps,
in engineering units), a drop from `last` to `x` whose wrapped increase `x + M - last` is
under M / 2 is a rollover, counted as that increase; any other drop is a reset (meter
cleared or replaced, a float counter dropping), and `x` counts as the increase since it.
Limit: between two good reads a counter must advance by less than M / 2; a reset from just
below the top of the range to a small value is taken for a rollover (over-counting by at
most M / 2).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.detect.kernels.jit import njit

F64 = npt.NDArray[np.float64]

# Columns of a counter state row: whether a good value was seen, and the last good value.
C_HAS, C_LAST = range(2)
COUNTER_FIELDS = 2


@njit(cache=True)
def counter_step(state: F64, row: int, x: float, modulus: float) -> tuple[float, bool]:
    """One good reading `x` of counter `row`: (increase since the last reading, was it a reset).

    The module's rollover-and-reset rule (wrapping-register arithmetic with half the range as
    the limit, as RFC 1982's serial numbers). `modulus` <= 0: the counter does not wrap.
    """
    if state[row, C_HAS] == 0.0:
        state[row, C_HAS] = 1.0
        state[row, C_LAST] = x
        return 0.0, False
    last = state[row, C_LAST]
    state[row, C_LAST] = x
    if x >= last:
        return x - last, False
    if modulus > 0.0:
        wrapped = x + modulus - last
        if wrapped < modulus / 2.0:
            return wrapped, False
    return max(x, 0.0), True
