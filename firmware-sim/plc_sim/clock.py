"""The simulation clock: advances a model on a fixed wall-clock tick.

Simulated time is derived from the monotonic clock, not from counting ticks:
each tick advances the model by the wall time that really elapsed since the
previous one (times the speed factor). A late or skipped tick therefore makes
one bigger step instead of slowing the simulated machine down, and wall-clock
adjustments (NTP, DST) never make it jump.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def run_clock(
    advance: Callable[[float], None],
    *,
    tick_s: float,
    speed: float = 1.0,
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Call `advance(sim_dt_s)` then `on_tick()` every `tick_s` wall seconds, until cancelled.

    `speed` is simulated seconds per wall second (10 runs the machine ten times
    faster than real time).
    """
    if tick_s <= 0.0 or speed <= 0.0:
        raise ValueError("tick_s and speed must be positive")
    last = time.monotonic()
    deadline = last + tick_s
    while True:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        now = time.monotonic()
        advance((now - last) * speed)
        last = now
        if on_tick is not None:
            on_tick()
        deadline += tick_s
        if deadline <= now:
            # Fell behind (loop stalled): resume the rhythm from now instead of
            # firing a burst of catch-up ticks; the elapsed time is not lost.
            deadline = now + tick_s
