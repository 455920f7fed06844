"""The anomaly detectors: thin classes around the kernels, one kernel call per batch.

A detector holds every row of one kind for one device (a row is a tag of a rule, or a
group of tags for the multivariate one), its configuration and state as arrays, and the
routing from a batch's tag tuple to rows (cached: a device's batches repeat their tags).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from agent.detect.episodes import EpisodeEvents, RowInfo, context_ring
from agent.detect.kernels import mset as km
from agent.detect.kernels.episode import EP_SCORE, new_episodes
from agent.detect.kernels.pca import (
    CUR_EWMA,
    CUR_FRESH,
    CUR_PLANES,
    CUR_SEEN,
    PCA_STATE,
    X_DIM,
    X_WARMUP,
    XS_FITTED,
    XS_K,
    XS_N,
    XS_Q,
    XS_T2,
    pca_batch,
)
from agent.detect.kernels.runs import RUN_COUNT, RUN_FIELDS, RUN_FIRST, RUN_ROW, RUN_STRIDE
from agent.detect.kernels.univariate import COMMON_PARAMS, P_AFTER
from agent.detect.learned_state import (
    Warmup,
    as_list,
    restore_rows,
    row_key,
    rows_finished,
    rows_learned,
    rows_warmup,
)
from agent.detect.tag_layouts import TagLayouts
from agent.events import Event
from drivers.samples import SampleBatch

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
PCA_KEEP_ROWS = 50_000
"""Values of learning rows a `pca` group keeps across a restart before its fit (400 rows of
32 tags is 12,800); a longer warm-up starts over after a restart."""
Kernel = Callable[..., int]
"""A batch kernel: returns how many rows it raised an episode counter on (`kernels.univariate`)."""
TickKernel = Callable[..., None]
Pairs = tuple[I64, I64, I64]
Runs = tuple[I64, int]
R = TypeVar("R")


def _pairs(sel: I64, rows: I64, cols: I64) -> Pairs:
    return sel, rows, cols


def _runs(sel: I64, rows: I64, cols: I64) -> Runs:
    """The runs of the univariate kernels (`kernels.runs`) and the longest run's length: samples
    grouped by row, in batch order within a row (a stable sort); a row whose positions are an
    arithmetic progression is one run, any other row one run per sample."""
    n = rows.shape[0]
    if n == 0:
        return np.zeros((0, RUN_FIELDS), dtype=np.int64), 0
    order = np.argsort(rows, kind="stable")
    row, pos = rows[order], sel[order]
    same = row[1:] == row[:-1]  # sample i + 1 feeds the row of sample i
    group = np.concatenate(([0], np.cumsum(~same)))  # each sample's row, numbered 0, 1, ...
    step = np.diff(pos)
    bent = np.zeros(n, dtype=bool)  # i's row steps into i + 1 otherwise than into i
    bent[1:-1] = same[1:] & same[:-1] & (step[1:] != step[:-1])
    irregular = np.zeros(int(group[-1]) + 1, dtype=bool)
    irregular[group[bent]] = True
    starts = np.flatnonzero(np.concatenate(([True], ~same)) | irregular[group])
    runs = np.zeros((starts.shape[0], RUN_FIELDS), dtype=np.int64)
    runs[:, RUN_ROW] = row[starts]
    runs[:, RUN_FIRST] = pos[starts]
    runs[:, RUN_COUNT] = np.diff(np.append(starts, n))
    runs[:, RUN_STRIDE] = 1
    longer = runs[:, RUN_COUNT] > 1
    runs[longer, RUN_STRIDE] = pos[starts[longer] + 1] - pos[starts[longer]]
    return runs, int(runs[:, RUN_COUNT].max())


class _Rows(Generic[R]):
    """Rows, their episodes, context ring and events: what both detector shapes share.
    `arrange` turns the batch positions, rows and columns of a tag tuple's samples into
    what the detector's kernel takes (cached per tuple)."""

    def __init__(self, device: str, rows: Sequence[RowInfo], context: Sequence[int],
                 arrange: Callable[[I64, I64, I64], R]) -> None:
        self.device = device
        self._arrange = arrange
        self.rows = tuple(rows)
        self.ep, self.times = new_episodes(len(self.rows))
        self.events = EpisodeEvents(device, self.rows, context)
        self._routes: TagLayouts[tuple[R, int]] = TagLayouts()
        """Per tag tuple: the route, and the most samples one row gets from such a batch."""
        self._tag_rows: dict[str, list[tuple[int, int]]] = {}
        for r, info in enumerate(self.rows):
            for c, tag in enumerate(info.tags):
                self._tag_rows.setdefault(tag, []).append((r, c))
        self.last_mono_ns = 0
        self._last: tuple[tuple[str, ...], R] | None = None
        self.most_per_row = 1
        """Most samples of one of its tags a row got from the batch last routed (a burst
        brings many): the samples pushed into its context ring by the batch, a group's
        rows closed by it."""

    def route(self, tags: tuple[str, ...]) -> R:
        """Every sample of the batch this detector folds, as `arrange` puts it."""
        if self._last is not None and self._last[0] is tags:
            return self._last[1]  # a driver reuses its plan's tuple: no hashing of it
        known = self._routes.get(tags)
        if known is None:
            pairs = [(j, r, c) for j, tag in enumerate(tags) for r, c in self._tag_rows.get(tag, ())]
            arr = np.array(pairs, dtype=np.int64).reshape(-1, 3)
            known = (self._arrange(np.ascontiguousarray(arr[:, 0]),
                                   np.ascontiguousarray(arr[:, 1]),
                                   np.ascontiguousarray(arr[:, 2])),
                     _most_per_row(arr[:, 1], arr[:, 2]))
            self._routes[tags] = known
        route, self.most_per_row = known
        self._last = (tags, route)
        return route

    def scores(self) -> dict[str, float]:
        return {info.score_key: float(s) for info, s in zip(self.rows, self.ep[:, EP_SCORE],
                                                             strict=True)}


def _most_per_row(rows: I64, cols: I64) -> int:
    """The most samples any (row, tag of the row) pair gets from a batch."""
    if len(rows) == 0:
        return 0
    return int(np.bincount(rows * (int(cols.max()) + 1) + cols).max())


class UnivariateDetector:
    """Limits, z-score, drift, stuck or RMS rows of one device (a Detector, ScoringDetector).

    `params`: a row of kernel parameters per row (`kernels.univariate`), P_AFTER its context
    size; `tick_kernel`, when given, also runs on the clock (a tag that stopped arriving).
    """

    def __init__(self, device: str, rows: Sequence[RowInfo], params: F64, state_fields: int,
                 kernel: Kernel, tick_kernel: TickKernel | None = None,
                 learns: int | None = None) -> None:
        context = [int(c) for c in params[:, P_AFTER]]
        self._rows = _Rows(device, rows, context, _runs)
        self._params = np.ascontiguousarray(params, dtype=np.float64)
        self._state = np.zeros((len(rows), state_fields), dtype=np.float64)
        self._context = max(context, default=0)
        self._ctx = np.full((len(rows), self._context or 1), np.nan)
        self._raised = np.zeros(len(rows), dtype=np.int64)
        """The rows a batch left with an episode counter raised (the kernel fills it)."""
        self._buf = np.zeros(1)
        """Room for a run's samples (the kernel's scratch): as long as the longest run yet."""
        self._kernel = kernel
        self._tick_kernel = tick_kernel
        self._keys = [row_key(info, self._params[r, COMMON_PARAMS:])
                      for r, info in enumerate(rows)] if learns is not None else []
        """`learns`: the `params` column of the warm-up length, for kinds whose state is learned
        statistics only (z-score, drift, rms: no monotonic times), kept across restarts; a
        row has learned when its sample count (state column 0) reaches it."""
        self._warmup = self._params[:, learns] if learns is not None else np.zeros(0)

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        runs, longest = self._rows.route(batch.tags)
        if longest > self._buf.shape[0]:
            self._buf = np.zeros(longest)
        r = self._rows
        r.last_mono_ns = batch.mono_ns
        if self._context + r.most_per_row - 1 > self._ctx.shape[1]:  # a longer burst
            self._ctx = context_ring(r.ep, self._ctx, self._context + r.most_per_row - 1)
        count = self._kernel(self._params, self._state, r.ep, r.times, self._ctx, runs,
                             batch.values, batch.quality, batch.mono_ns, batch.time_ns,
                             self._raised, self._buf)
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

    def interrupt(self, time_ns: int, mono_ns: int, why: str) -> list[Event]:
        """The rows stop being fed for a while (`why`, e.g. `machine_state`): episodes in progress
        end now (`ongoing`); `limits` and `stuck`, whose state is times and last values, start
        afresh when fed again. What the others learned stays."""
        r = self._rows
        events = r.events.flush(r.ep, r.times, self._ctx, time_ns, mono_ns, why)
        if not self._keys:
            self._state[:] = 0.0
        return events

    def scores(self) -> Mapping[str, float]:
        return self._rows.scores()

    def learned(self) -> dict[str, Any]:
        return rows_learned(self._keys, self._state)

    def restore(self, saved: Mapping[str, Any]) -> int:
        return restore_rows(self._keys, self._state, saved)

    def milestones(self) -> int:
        return 0

    def finished(self) -> dict[str, bool]:
        return rows_finished(self._keys, self._state[:, 0], self._warmup)

    def warmup(self) -> dict[str, Warmup]:
        return rows_warmup(self._keys, self._state[:, 0], self._warmup, "samples")


class _GroupDetector:
    """What the multivariate detectors share: groups of tags of one device as rows of the
    kernel's arrays (`kernels.pca`'s layout of rows, warm-up and state), the context ring,
    events, scores and which groups have learned. A subclass adds its model and kernel."""

    def __init__(self, device: str, rows: Sequence[RowInfo], params: F64,
                 state_fields: int, cur_planes: int) -> None:
        self._dim = max(len(info.tags) for info in rows)
        groups = len(rows)
        context = [int(c) for c in params[:, P_AFTER]]
        self._context = max(context, default=0)
        self._rows = _Rows(device, rows, context, _pairs)
        self._params = np.ascontiguousarray(params, dtype=np.float64)
        self._state = np.zeros((groups, state_fields))
        self._cur = np.zeros((groups, cur_planes, self._dim))
        self._buf = np.zeros((groups, max(int(params[:, X_WARMUP].max()), 1), self._dim))
        self._ctx = np.full((groups, max(self._context, 1), self._dim), np.nan)
        self._keys = [row_key(info, self._params[g, COMMON_PARAMS:])
                      for g, info in enumerate(rows)]

    def _route(self, batch: SampleBatch) -> tuple[I64, I64, I64]:
        """The batch's samples as (sample, group, column); the ring grown for its bursts."""
        sel, rows, cols = self._rows.route(batch.tags)
        r = self._rows
        r.last_mono_ns = batch.mono_ns
        # A burst closes up to one row per sample of a tag: the ring keeps the context
        # around an episode that starts or ends inside it until the events are made.
        if self._context + r.most_per_row - 1 > self._ctx.shape[1]:
            self._ctx = context_ring(r.ep, self._ctx, self._context + r.most_per_row - 1)
        return sel, rows, cols

    def _events(self) -> list[Event]:
        r = self._rows
        return r.events.collect(r.ep, r.times, self._ctx)

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        return []

    def flush(self, time_ns: int) -> list[Event]:
        r = self._rows
        return r.events.flush(r.ep, r.times, self._ctx, time_ns, r.last_mono_ns)

    def _stop_rows(self, time_ns: int, mono_ns: int, why: str) -> list[Event]:
        """Episodes in progress end now (`ongoing`); the next row waits for a new value of
        every tag, and the scores are NaN until then."""
        r = self._rows
        events = r.events.flush(r.ep, r.times, self._ctx, time_ns, mono_ns, why)
        self._cur[:, CUR_SEEN] = 0.0
        self._cur[:, CUR_FRESH] = 0.0
        r.ep[:, EP_SCORE] = np.nan
        return events

    def scores(self) -> Mapping[str, float]:
        return self._rows.scores()

    def milestones(self) -> int:
        return int(np.count_nonzero(self._state[:, XS_FITTED]))

    def finished(self) -> dict[str, bool]:
        return {key: bool(self._state[g, XS_FITTED] != 0.0) for g, key in enumerate(self._keys)}

    def warmup(self) -> dict[str, Warmup]:
        """Rows of every tag of the group, one per new value of all of them."""
        return rows_warmup(self._keys, self._state[:, XS_N], self._params[:, X_WARMUP], "rows")


class PcaDetector(_GroupDetector):
    """Multivariate groups of one device: streaming PCA, T² and Q (a Detector, ScoringDetector).

    `params` has one row per group (see `kernels.pca`).
    """

    def __init__(self, device: str, rows: Sequence[RowInfo], params: F64) -> None:
        super().__init__(device, rows, params, PCA_STATE, CUR_PLANES)
        self._model = np.zeros((len(rows), self._dim + 3, self._dim))

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        sel, rows, cols = self._route(batch)
        r = self._rows
        pca_batch(self._params, self._state, self._cur, self._buf, self._model, r.ep, r.times,
                  self._ctx, sel, rows, cols, batch.values, batch.quality, batch.mono_ns,
                  batch.time_ns)
        return self._events()

    def interrupt(self, time_ns: int, mono_ns: int, why: str) -> list[Event]:
        """The groups stop being fed: episodes in progress end now (`ongoing`); the model stays and
        the chart restarts at its target: the next row waits for a new value of every tag (NaN
        until then), the smoothed rows start at the model's mean, T² and Q at their expected
        values (docs/detection.md, "Only in some machine states")."""
        events = self._stop_rows(time_ns, mono_ns, why)
        for g in np.flatnonzero(self._state[:, XS_FITTED] != 0.0):
            d, k = int(self._params[g, X_DIM]), int(self._state[g, XS_K])
            self._cur[g, CUR_EWMA, :d] = self._model[g, d, :d]
            # What T² and Q average to in normal operation: k, and the eigenvalues left out.
            self._state[g, XS_T2] = k
            self._state[g, XS_Q] = max(float(self._model[g, d + 2, k:d].sum()), 0.0)
        return events

    def learned(self) -> dict[str, Any]:
        """Per group: its state row, its model (once fitted), the EWMA of its rows, and the
        rows learned so far (before the fit, unless there are more than PCA_KEEP_ROWS)."""
        out: dict[str, Any] = {}
        for g, key in enumerate(self._keys):
            d = int(self._params[g, X_DIM])
            n = int(self._state[g, XS_N])
            fitted = self._state[g, XS_FITTED] != 0.0
            if not fitted and n * d > PCA_KEEP_ROWS:
                continue
            out[key] = {"state": as_list(self._state[g]),
                        "model": as_list(self._model[g, :d + 3, :d]) if fitted else [],
                        "ewma": as_list(self._cur[g, CUR_EWMA, :d]),
                        "rows": [] if fitted else as_list(self._buf[g, :n, :d])}
        return out

    def restore(self, saved: Mapping[str, Any]) -> int:
        restored = 0
        for g, key in enumerate(self._keys):
            entry = saved.get(key)
            d = int(self._params[g, X_DIM])
            try:
                state = np.asarray(entry["state"], dtype=np.float64)  # type: ignore[index]
                model = np.asarray(entry["model"], dtype=np.float64)  # type: ignore[index]
                ewma = np.asarray(entry["ewma"], dtype=np.float64)  # type: ignore[index]
                rows = np.asarray(entry["rows"], dtype=np.float64)  # type: ignore[index]
            except (TypeError, KeyError, ValueError):
                continue
            fitted = state.shape == (PCA_STATE,) and state[XS_FITTED] != 0.0
            n = int(state[XS_N]) if state.shape == (PCA_STATE,) else -1
            if (state.shape != (PCA_STATE,) or ewma.shape != (d,)
                    or (fitted and model.shape != ((d + 3) * d,))
                    or (not fitted and rows.shape != (n * d,))):
                continue
            self._state[g] = state
            self._cur[g, CUR_EWMA, :d] = ewma
            if fitted:
                self._model[g, :d + 3, :d] = model.reshape(d + 3, d)
            else:
                self._buf[g, :n, :d] = rows.reshape(n, d)
            restored += 1
        return restored


class MsetDetector(_GroupDetector):
    """Multivariate groups of one device: MSET estimates and the SPRT of their residuals (a
    Detector, ScoringDetector). `params` has one row per group (see `kernels.mset`)."""

    def __init__(self, device: str, rows: Sequence[RowInfo], params: F64) -> None:
        super().__init__(device, rows, params, km.MSET_STATE, km.CUR_PLANES)
        kcap = max(km.memory_size(int(p[km.X_MEMORY]), int(p[X_DIM]), int(p[X_WARMUP]))
                   for p in params)
        self._model = np.zeros((len(rows), 2 * kcap + 3, self._dim))
        self._sprt = np.zeros((len(rows), km.SPRT_PLANES, self._dim))
        self._work = np.zeros(kcap + 2 * self._dim)

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        sel, rows, cols = self._route(batch)
        r = self._rows
        km.mset_batch(self._params, self._state, self._cur, self._buf, self._model, self._sprt,
                      self._work, r.ep, r.times, self._ctx, sel, rows, cols, batch.values,
                      batch.quality, batch.mono_ns, batch.time_ns)
        return self._events()

    def interrupt(self, time_ns: int, mono_ns: int, why: str) -> list[Event]:
        """The groups stop being fed: episodes in progress end now (`ongoing`); the memory
        stays, the tests start again from no evidence, and the next row waits for a new value
        of every tag (NaN until then)."""
        events = self._stop_rows(time_ns, mono_ns, why)
        self._sprt[:] = 0.0
        return events

    def learned(self) -> dict[str, Any]:
        """Per group: its state row, its model (once fitted), and the rows learned so far
        (before the fit, unless there are more than PCA_KEEP_ROWS values)."""
        out: dict[str, Any] = {}
        for g, key in enumerate(self._keys):
            d = int(self._params[g, X_DIM])
            n = int(self._state[g, XS_N])
            fitted = self._state[g, XS_FITTED] != 0.0
            if not fitted and n * d > PCA_KEEP_ROWS:
                continue
            out[key] = {"state": as_list(self._state[g]),
                        "model": as_list(self._model[g, :, :d]) if fitted else [],
                        "rows": [] if fitted else as_list(self._buf[g, :n, :d])}
        return out

    def restore(self, saved: Mapping[str, Any]) -> int:
        restored = 0
        rows_of_model = self._model.shape[1]
        for g, key in enumerate(self._keys):
            entry = saved.get(key)
            d = int(self._params[g, X_DIM])
            try:
                state = np.asarray(entry["state"], dtype=np.float64)  # type: ignore[index]
                model = np.asarray(entry["model"], dtype=np.float64)  # type: ignore[index]
                rows = np.asarray(entry["rows"], dtype=np.float64)  # type: ignore[index]
            except (TypeError, KeyError, ValueError):
                continue
            if state.shape != (km.MSET_STATE,):
                continue
            fitted = state[XS_FITTED] != 0.0
            n = int(state[XS_N])
            if ((fitted and model.shape != (rows_of_model * d,))
                    or (not fitted and (rows.shape != (n * d,) or n > self._buf.shape[1]))):
                continue
            self._state[g] = state
            if fitted:
                self._model[g, :, :d] = model.reshape(rows_of_model, d)
            else:
                self._buf[g, :n, :d] = rows.reshape(n, d)
            restored += 1
        return restored
