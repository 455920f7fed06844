"""The `band_rms` detector: every band_rms rule of one device, one kernel call per batch.

A batch's samples go to *signal rows* (one per tag of a rule: the ring of its last
samples), whose blocks score *band rows* (one per band of that tag: the episode rows, which
events and scores are about). See `kernels.band` for the arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.detect.episodes import EpisodeEvents, RowInfo, context_ring
from agent.detect.kernels.band import (
    B_WARMUP,
    BAND_STATE,
    BS_BLOCKS,
    G_BANDS,
    G_CONTINUOUS,
    G_FIRST_BAND,
    GS_FILL,
    GS_SINCE,
    SIGNAL_STATE,
    band_rms_batch,
    fft_tables,
)
from agent.detect.kernels.episode import EP_SCORE, P_AFTER, new_episodes
from agent.detect.learned_state import (
    Warmup,
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
Route = tuple[I64, I64]


class BandRmsDetector:
    """Band RMS rows of one device (a Detector, ScoringDetector).

    `signal_tags[g]`/`signal_params[g]`: signal row g's tag and kernel parameters;
    `bands`/`band_params`: the band rows; `windows[t]`: rule t's window (fft_samples long).
    Memory: a ring of fft_samples float64 per signal row.
    """

    def __init__(self, device: str, signal_tags: Sequence[str], signal_params: F64,
                 bands: Sequence[RowInfo], band_params: F64, windows: Sequence[F64]) -> None:
        self.device = device
        self._rows = tuple(bands)
        self._gp = np.ascontiguousarray(signal_params, dtype=np.float64)
        self._gs = np.zeros((len(signal_tags), SIGNAL_STATE))
        longest = max(len(w) for w in windows)
        self._ring = np.zeros((len(signal_tags), longest))
        self._bp = np.ascontiguousarray(band_params, dtype=np.float64)
        self._bs = np.zeros((len(self._rows), BAND_STATE))
        context = [int(c) for c in self._bp[:, P_AFTER]]
        self._ep, self._times = new_episodes(len(self._rows))
        self._context = max(context, default=0)
        self._ctx = np.full((len(self._rows), self._context or 1), np.nan)
        self._events = EpisodeEvents(device, self._rows, context)
        # Tables padded to the longest block: a rule reads only its first N (or N/2).
        self._windows = np.zeros((len(windows), longest))
        self._tw_re = np.zeros((len(windows), longest // 2))
        self._tw_im = np.zeros((len(windows), longest // 2))
        self._bitrev = np.zeros((len(windows), longest // 2), dtype=np.int64)
        for t, w in enumerate(windows):
            n = len(w)
            self._windows[t, :n] = w
            self._tw_re[t, :n // 2], self._tw_im[t, :n // 2], self._bitrev[t, :n // 2] = \
                fft_tables(n)
        self._work = np.zeros((3, longest // 2 + 1))
        self._tag_rows: dict[str, list[int]] = {}
        for g, tag in enumerate(signal_tags):
            self._tag_rows.setdefault(tag, []).append(g)
        self._routes: TagLayouts[tuple[Route, int]] = TagLayouts()
        self._last: tuple[tuple[str, ...], Route, int] | None = None
        self._last_mono_ns = 0
        self._last_time_ns = 0
        self._captures = np.flatnonzero(self._gp[:, G_CONTINUOUS] == 0.0)
        """Signal rows of rules whose batches are captures of their own (not `continuous`)."""
        owner = {int(self._gp[g, G_FIRST_BAND]) + b: g for g in range(len(signal_tags))
                 for b in range(int(self._gp[g, G_BANDS]))}
        self._keys = [row_key(info, self._bp[r, P_AFTER + 1:], self._gp[owner[r]])
                      for r, info in enumerate(self._rows)]
        """A band's learned level is kept across restarts, keyed also by its signal's block
        settings (rate, length, window: another block, another level)."""

    def _route(self, tags: tuple[str, ...]) -> tuple[Route, int]:
        """Batch positions and signal rows of every sample this detector folds, and the most
        samples one signal row gets (a capture's length)."""
        if self._last is not None and self._last[0] is tags:
            return self._last[1], self._last[2]  # a driver reuses its plan's tuple
        known = self._routes.get(tags)
        if known is None:
            pairs = [(j, g) for j, tag in enumerate(tags) for g in self._tag_rows.get(tag, ())]
            arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
            route = (np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1]))
            known = route, int(np.bincount(route[1]).max()) if len(route[1]) else 0
            self._routes[tags] = known
        self._last = (tags, *known)
        return known

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        (sel, rows), most = self._route(batch.tags)
        if batch.mono_ns == self._last_mono_ns and batch.time_ns != self._last_time_ns:
            # The kernel tells captures apart by the batch's monotonic time, but batches of
            # one reception share it (a subscription's publish with two captures of a tag):
            # a batch of another time is another capture all the same.
            self._gs[self._captures, GS_FILL] = 0.0
            self._gs[self._captures, GS_SINCE] = 0.0
        self._last_mono_ns, self._last_time_ns = batch.mono_ns, batch.time_ns
        if self._context + most - 1 > self._ctx.shape[1]:  # the context around a block's
            self._ctx = context_ring(self._ep, self._ctx, self._context + most - 1)  # episode
        band_rms_batch(self._gp, self._gs, self._ring, self._bp, self._bs, self._ep,
                       self._times, self._ctx, self._windows, self._tw_re, self._tw_im,
                       self._bitrev, self._work, sel, rows, batch.values, batch.quality,
                       batch.mono_ns, batch.time_ns)
        return self._events.collect(self._ep, self._times, self._ctx)

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        return []

    def flush(self, time_ns: int) -> list[Event]:
        return self._events.flush(self._ep, self._times, self._ctx, time_ns,
                                  self._last_mono_ns)

    def interrupt(self, time_ns: int, mono_ns: int, why: str) -> list[Event]:
        """The signals stop being fed for a while: episodes in progress end now (`ongoing`),
        and the next block starts with the next sample (none spans the pause, even of a
        `continuous` stream); the learned band levels stay."""
        self._gs[:, GS_FILL] = 0.0
        self._gs[:, GS_SINCE] = 0.0
        return self._events.flush(self._ep, self._times, self._ctx, time_ns, mono_ns, why)

    def scores(self) -> Mapping[str, float]:
        """`rule:tag:band` -> the band's RMS (tag unit) at its last block."""
        return {info.score_key: float(s)
                for info, s in zip(self._rows, self._ep[:, EP_SCORE], strict=True)}

    def learned(self) -> dict[str, Any]:
        return rows_learned(self._keys, self._bs)

    def restore(self, saved: Mapping[str, Any]) -> int:
        return restore_rows(self._keys, self._bs, saved)

    def milestones(self) -> int:
        return 0

    def finished(self) -> dict[str, bool]:
        return rows_finished(self._keys, self._bs[:, BS_BLOCKS], self._bp[:, B_WARMUP])

    def warmup(self) -> dict[str, Warmup]:
        return rows_warmup(self._keys, self._bs[:, BS_BLOCKS], self._bp[:, B_WARMUP], "blocks")
