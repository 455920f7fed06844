"""Per-tag window aggregates: the condensed view of every tag, once per window.

Windows run on the monotonic clock (a clock step cannot stretch or shrink one);
the event carries the wall-clock start and end for the cloud.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import structlog

from agent.detect.kernels.counter import C_HAS, C_LAST, COUNTER_FIELDS
from agent.detect.kernels.window import (
    W_BAD,
    W_COUNT,
    W_INCREASE,
    W_LAST,
    W_M2,
    W_MAX,
    W_MEAN,
    W_MIN,
    W_RESETS,
    WINDOW_FIELDS,
    window_accumulate,
)
from agent.detect.open_windows import OpenWindows
from agent.detect.state_file import StateFile
from agent.detect.tag_layouts import TagLayouts
from agent.detect.window_keep import WindowKeep
from agent.events import WINDOW, Event
from drivers.samples import SampleBatch

log = structlog.get_logger(__name__)


class WindowAggregator:
    """Min, max, mean, standard deviation, last value and counts per tag (a Detector).

    `counters`: each counter tag's modulus (None: no wrap); those tags also get `increase` and
    `resets`. With a `store` a counter's last value is saved at each window's close and read
    back at start: the increase over a restart goes to the first window after it, once.
    With a `keep` the open window is kept in RAM after each batch and resumed by the next
    start of the same boot (agent/detect/window_keep.py): a kill loses none of it. With
    `open_windows` its opens and closes are listed on disk, so that a power cut's are named
    at the next start (agent/detect/open_windows.py).
    """

    def __init__(self, device: str, tags: Sequence[str], units: Mapping[str, str], window_s: float,
                 counters: Mapping[str, float | None] | None = None,
                 store: StateFile | None = None, keep: WindowKeep | None = None,
                 open_windows: OpenWindows | None = None):
        self._device = device
        self._window_s = window_s
        self._open_windows = open_windows
        self._tags = tuple(tags)
        self._units = dict(units)
        self._window_ns = int(window_s * 1e9)
        self._row = {tag: i for i, tag in enumerate(self._tags)}
        self._state = np.zeros((len(self._tags), WINDOW_FIELDS), dtype=np.float64)
        self._counters = np.zeros((len(self._tags), COUNTER_FIELDS), dtype=np.float64)
        self._modulus = np.full(len(self._tags), np.nan)
        for tag, modulus in (counters or {}).items():
            self._modulus[self._row[tag]] = modulus if modulus is not None else 0.0
        self._store = store if counters else None
        if self._store is not None:
            for tag, last in self._store.load().items():
                row = self._row.get(tag)
                if row is not None and not math.isnan(self._modulus[row]) and \
                        isinstance(last, float | int):
                    self._counters[row, C_HAS], self._counters[row, C_LAST] = 1.0, float(last)
        self._index_cache: TagLayouts[np.ndarray] = TagLayouts()
        self._open_mono_ns: int | None = None
        self._open_time_ns = 0
        self._last_mono_ns = self._last_time_ns = 0
        self._keep = keep
        self._resumed = False
        if keep is not None:
            self._resume(keep)

    def _resume(self, keep: WindowKeep) -> None:
        """Take up the window a killed run of this boot left open."""
        kept = keep.load()
        if kept is None:
            return
        self._state, self._counters = kept.state, kept.counters
        self._open_mono_ns, self._open_time_ns = kept.open_mono_ns, kept.open_time_ns
        self._last_mono_ns, self._last_time_ns = kept.last_mono_ns, kept.last_time_ns
        self._resumed = True
        if self._open_windows is not None:
            self._open_windows.opened(self._device, kept.open_time_ns, self._window_s,
                                      resumed=True)
        log.info("window_resumed", device=self._device, start_ns=kept.open_time_ns,
                 last_sample_ns=kept.last_time_ns,
                 samples=int(self._state[:, W_COUNT].sum() + self._state[:, W_BAD].sum()))

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        events = self.on_tick(batch.mono_ns, batch.time_ns)
        if self._open_mono_ns is None:
            self._open_mono_ns = batch.mono_ns
            self._open_time_ns = batch.time_ns
            if self._open_windows is not None:
                self._open_windows.opened(self._device, batch.time_ns, self._window_s)
        window_accumulate(self._state, self._index(batch.tags), batch.values, batch.quality,
                          self._counters, self._modulus)
        self._last_mono_ns, self._last_time_ns = batch.mono_ns, batch.time_ns
        if self._keep is not None:
            self._keep.save(self._open_mono_ns, self._open_time_ns, batch.mono_ns, batch.time_ns,
                            self._state, self._counters)
        return events

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        if self._open_mono_ns is None or mono_ns - self._open_mono_ns < self._window_ns:
            return []
        if self._resumed and mono_ns - self._last_mono_ns > self._window_ns:
            # A window resumed after a stop longer than a window: it ends at its last sample.
            return self._close(self._last_time_ns)
        return self._close(time_ns)

    def flush(self, time_ns: int) -> list[Event]:
        """Close the open window (the device stops): nothing is left to keep."""
        events = self._close(time_ns) if self._open_mono_ns is not None else []
        if self._keep is not None:
            self._keep.remove()
        return events

    def _save(self) -> None:
        assert self._store is not None
        self._store.save({tag: float(self._counters[row, C_LAST])
                          for tag, row in self._row.items()
                          if not math.isnan(self._modulus[row]) and self._counters[row, C_HAS]})

    def _close(self, end_time_ns: int) -> list[Event]:
        state = self._state
        tags: dict[str, dict[str, object]] = {}
        for tag, row in self._row.items():
            n = int(state[row, W_COUNT])
            bad = int(state[row, W_BAD])
            if n == 0 and bad == 0:
                continue
            summary: dict[str, object] = {"n": n, "bad": bad, "unit": self._units.get(tag, "")}
            if n:
                summary.update(
                    min=float(state[row, W_MIN]),
                    max=float(state[row, W_MAX]),
                    mean=float(state[row, W_MEAN]),
                    std=math.sqrt(state[row, W_M2] / n) if n > 1 else 0.0,
                    last=float(state[row, W_LAST]),
                )
            if not math.isnan(self._modulus[row]):
                summary.update(increase=float(state[row, W_INCREASE]),
                               resets=int(state[row, W_RESETS]))
            tags[tag] = summary
        start_ns = self._open_time_ns
        state.fill(0.0)
        if self._store is not None:
            self._save()
        if self._keep is not None:
            self._keep.clear()
        self._open_mono_ns = None
        self._resumed = False
        if self._open_windows is not None:
            self._open_windows.closed(self._device)
        if not tags:
            return []
        data = {"start_ns": start_ns, "end_ns": end_time_ns, "tags": tags}
        return [Event(kind=WINDOW, device=self._device, time_ns=end_time_ns, data=data)]

    def _index(self, tags: tuple[str, ...]) -> np.ndarray:
        index = self._index_cache.get(tags)
        if index is None:
            unknown = [t for t in tags if t not in self._row]
            if unknown:
                raise KeyError(f"{self._device}: batch has tags this detector was not built for: {unknown}")
            index = np.array([self._row[t] for t in tags], dtype=np.int64)
            self._index_cache[tags] = index
        return index
