"""The counter kernel: the increase of a cumulative value across rollover and reset.

One rule, used by the window aggregates (a counter tag's `increase`) and by the machine
detector (energy from a meter's counter, parts from a cycle counter):

- a rise is the increase;
- a drop that fits a wrap is a rollover: with a modulus M (where the register wraps, in
  engineering units), a drop from `last` to `x` whose wrapped increase `x + M - last` is
  less than M / 2 counted as that increase;
- any other drop is a reset (meter replaced or cleared, a float counter dropping): the new
  value counts as the increase since the reset (the counter restarted from zero).

Limit: between two good reads a counter must advance by less than half its range, else
a wrap cannot be told from a reset; and a reset close below the top of the range to a
small value is taken for a rollover (over-counting by at most M / 2). A 32-bit Wh meter
polled every second never comes near either.
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

    Rollover-and-reset rule of the module docstring (modulo arithmetic of wrapping
    registers, e.g. RFC 1982's serial-number comparison with half the range as the limit).
    `modulus` <= 0 means the counter does not wrap (every drop is a reset).
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
