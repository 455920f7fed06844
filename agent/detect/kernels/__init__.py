"""Every numba kernel of the detectors, the form they run in, and their ahead-of-time build.

Kernels are pure functions over arrays, their state passed in and returned as arrays.
`source.MODULES` lists the kernel modules: the source hash and the ahead-of-time build
(`build.py`) cover exactly these, and a test fails when a module of this folder decorates
with `jit.njit` without being listed. `jit.py` decides the form at import: the compiled
extension built from the current source, numba's JIT, or plain Python. Importing this
package imports no kernel and no numba.
"""

from __future__ import annotations

from collections.abc import Collection

KINDS = ("limits", "zscore", "novelty", "drift", "stuck", "rms", "pca", "mset", "band_rms")
"""Every detector kind that has kernels."""


def warm_up(kinds: Collection[str] | None = None) -> None:
    """Compile (or load from the cache) the window and machine kernels and those of `kinds`
    (all when None) on tiny arrays, before READY: the first poll then never waits for a
    compilation, and a numba that cannot compile fails the start, not the first sample."""
    import numpy as np

    from agent.detect.kernels import band, mset, novelty, pca, univariate
    from agent.detect.kernels.counter import COUNTER_FIELDS
    from agent.detect.kernels.machine import warm_up_machine
    from agent.detect.kernels.window import WINDOW_FIELDS, window_accumulate

    state = np.zeros((1, WINDOW_FIELDS), dtype=np.float64)
    window_accumulate(state, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float64),
                      np.zeros(1, dtype=np.uint8), np.zeros((1, COUNTER_FIELDS)),
                      np.zeros(1, dtype=np.float64))
    warm_up_machine()
    wanted = set(KINDS if kinds is None else kinds)
    univariate.warm_up(wanted)
    if "novelty" in wanted:
        novelty.warm_up()
    if "pca" in wanted:
        pca.warm_up()
    if "mset" in wanted:
        mset.warm_up()
    if "band_rms" in wanted:
        band.warm_up()
