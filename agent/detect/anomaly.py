"""The anomaly detectors: thin classes around the kernels, one kernel call per batch.

A detector holds every row of one kind for one device (a row is a tag of a rule, or a
group of tags for the multivariate one), its configuration and state as arrays, and the
routing from a batch's tag tuple to rows (cached: a device's batches repeat their tags).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from agent.detect.episodes import EpisodeEvents, RowInfo
from agent.detect.kernels_episode import EP_SCORE, new_episodes
from agent.detect.kernels_pca import PCA_STATE, X_WARMUP, pca_batch
from agent.detect.kernels_univariate import P_AFTER
from agent.events import Event
from drivers.samples import SampleBatch

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Kernel = Callable[..., int]
"""A batch kernel: returns how many rows it raised an episode counter on (`kernels_univariate`)."""
TickKernel = Callable[..., None]
Route = tuple[I64, I64, I64]


def _by_row(sel: I64, rows: I64) -> Route:
    """`run_rows`, `run_starts` and `sel` of the univariate kernels (`kernels_univariate`):
    the samples grouped by the row they feed, in batch order within a row (a stable sort)."""
    order = np.argsort(rows, kind="stable")
    grouped = rows[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(grouped)) + 1, [grouped.shape[0]]))
    run_starts = np.ascontiguousarray(starts[:1] if grouped.shape[0] == 0 else starts,
                                      dtype=np.int64)
    return (np.ascontiguousarray(grouped[run_starts[:-1]], dtype=np.int64), run_starts,
            np.ascontiguousarray(sel[order], dtype=np.int64))


class _Rows:
    """Rows, their episodes, context ring and events: what both detector shapes share."""

    def __init__(self, device: str, rows: Sequence[RowInfo], context: Sequence[int],
                 *, runs: bool = False) -> None:
        self.device = device
        self._runs = runs
        self.rows = tuple(rows)
        self.ep, self.times = new_episodes(len(self.rows))
        self.events = EpisodeEvents(device, self.rows, context)
        self._routes: dict[tuple[str, ...], Route] = {}
        self._tag_rows: dict[str, list[tuple[int, int]]] = {}
        for r, info in enumerate(self.rows):
            for c, tag in enumerate(info.tags):
                self._tag_rows.setdefault(tag, []).append((r, c))
        self.last_mono_ns = 0
        self._last: tuple[tuple[str, ...], Route] | None = None

    def route(self, tags: tuple[str, ...]) -> Route:
        """Batch positions, rows and columns of every sample this detector folds, in batch
        order; or, for `runs`, the same samples as runs of one row each (`_by_row`)."""
        if self._last is not None and self._last[0] is tags:
            return self._last[1]  # a driver reuses its plan's tuple: no hashing of it
        route = self._routes.get(tags)
        if route is None:
            pairs = [(j, r, c) for j, tag in enumerate(tags) for r, c in self._tag_rows.get(tag, ())]
            arr = np.array(pairs, dtype=np.int64).reshape(-1, 3)
            sel, rows = np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1])
            route = _by_row(sel, rows) if self._runs else (sel, rows,
                                                           np.ascontiguousarray(arr[:, 2]))
            self._routes[tags] = route
        self._last = (tags, route)
        return route

    def scores(self) -> dict[str, float]:
        return {info.score_key: float(s) for info, s in zip(self.rows, self.ep[:, EP_SCORE],
                                                             strict=True)}


class UnivariateDetector:
    """Limits, z-score, drift, stuck or RMS rows of one device (a Detector, ScoringDetector).

    `params` holds one row of kernel parameters per row (see `kernels_univariate`), whose
    P_AFTER column is the row's context size; `tick_kernel`, when given, also runs on the
    clock (a tag that stopped arriving).
    """

    def __init__(self, device: str, rows: Sequence[RowInfo], params: F64, state_fields: int,
                 kernel: Kernel, tick_kernel: TickKernel | None = None) -> None:
        context = [int(c) for c in params[:, P_AFTER]]
        self._rows = _Rows(device, rows, context, runs=True)
        self._params = np.ascontiguousarray(params, dtype=np.float64)
        self._state = np.zeros((len(rows), state_fields), dtype=np.float64)
        self._ctx = np.full((len(rows), max(context, default=0) or 1), np.nan)
        self._raised = np.zeros(len(rows), dtype=np.int64)
        """The rows a batch left with an episode counter raised (the kernel fills it)."""
        self._kernel = kernel
        self._tick_kernel = tick_kernel

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        run_rows, run_starts, sel = self._rows.route(batch.tags)
        r = self._rows
        r.last_mono_ns = batch.mono_ns
        count = self._kernel(self._params, self._state, r.ep, r.times, self._ctx, run_rows,
                             run_starts, sel, batch.values, batch.quality, batch.mono_ns,
                             batch.time_ns, self._raised)
        if count == 0:
            return []
        return r.events.collect(r.ep, r.times, self._ctx, self._raised[:count])

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        if self._tick_kernel is None:
            return []
        r = self._rows
        self._tick_kernel(self._params, self._state, r.ep, r.times, mono_ns, time_ns)
        return r.events.collect(r.ep, r.times, self._ctx)

    def flush(self, time_ns: int) -> list[Event]:
        r = self._rows
        return r.events.flush(r.ep, r.times, self._ctx, time_ns, r.last_mono_ns)

    def scores(self) -> Mapping[str, float]:
        return self._rows.scores()


class PcaDetector:
    """Multivariate groups of one device: streaming PCA, T² and Q (a Detector, ScoringDetector).

    `params` has one row per group (see `kernels_pca`).
    """

    def __init__(self, device: str, rows: Sequence[RowInfo], params: F64) -> None:
        dim = max(len(info.tags) for info in rows)
        groups = len(rows)
        context = [int(c) for c in params[:, P_AFTER]]
        warmup = int(params[:, X_WARMUP].max())
        context_samples = max(context, default=0)
        self._rows = _Rows(device, rows, context)
        self._params = np.ascontiguousarray(params, dtype=np.float64)
        self._state = np.zeros((groups, PCA_STATE))
        self._cur = np.zeros((groups, 3, dim))
        self._buf = np.zeros((groups, max(warmup, 1), dim))
        self._model = np.zeros((groups, dim + 3, dim))
        self._ctx = np.full((groups, max(context_samples, 1), dim), np.nan)

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        sel, rows, cols = self._rows.route(batch.tags)
        r = self._rows
        r.last_mono_ns = batch.mono_ns
        pca_batch(self._params, self._state, self._cur, self._buf, self._model, r.ep, r.times,
                  self._ctx, sel, rows, cols, batch.values, batch.quality, batch.mono_ns,
                  batch.time_ns)
        return r.events.collect(r.ep, r.times, self._ctx)

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        return []

    def flush(self, time_ns: int) -> list[Event]:
        r = self._rows
        return r.events.flush(r.ep, r.times, self._ctx, time_ns, r.last_mono_ns)

    def scores(self) -> Mapping[str, float]:
        return self._rows.scores()
