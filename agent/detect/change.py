"""Report-on-change: a `change` event when a tag's value moves by more than its deadband.

For the tags a technician marks `report_on_change` (a machine-state register, a
setpoint, an alarm word), and for every text value (a recipe name, a serial number):
the cloud learns of each change as it happens, not one window later. The first good
value after start is reported too (`previous` is nil). Detectors still see every
sample; this only decides what is worth an event of its own.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from agent.detect.tag_layouts import TagLayouts
from agent.events import CHANGE, Event
from drivers.samples import Quality, SampleBatch


class ChangeReporter:
    """One `change` event per batch that changed a watched tag (a Detector)."""

    def __init__(self, device: str, deadbands: Mapping[str, float], units: Mapping[str, str]) -> None:
        self._device = device
        self._tags = tuple(deadbands)
        self._row = {tag: i for i, tag in enumerate(self._tags)}
        self._deadband = np.array([deadbands[t] for t in self._tags], dtype=np.float64)
        self._last = np.full(len(self._tags), np.nan)
        self._units = dict(units)
        self._texts: dict[str, str] = {}
        self._index_cache: TagLayouts[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = \
            TagLayouts()

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        changes: dict[str, dict[str, object]] = {}
        if self._tags:
            positions, rows = self._index(batch.tags)
            if len(rows):
                values = batch.values[positions]
                good = batch.quality[positions] == Quality.GOOD
                last = self._last[rows]
                # NaN `last` (nothing reported yet) compares False: the first value is a change.
                moved = good & ~(np.abs(values - last) <= self._deadband[rows])
                for j in np.flatnonzero(moved):
                    tag = self._tags[rows[j]]
                    previous = float(last[j])
                    changes[tag] = {"value": float(values[j]),
                                    "previous": None if np.isnan(previous) else previous,
                                    "unit": self._units.get(tag, "")}
                self._last[rows[moved]] = values[moved]
        for tag, text in batch.texts.items():
            previous_text = self._texts.get(tag)
            if text != previous_text:
                changes[tag] = {"value": text, "previous": previous_text, "unit": ""}
                self._texts[tag] = text
        if not changes:
            return []
        return [Event(CHANGE, self._device, batch.time_ns, {"tags": changes})]

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        return []

    def flush(self, time_ns: int) -> list[Event]:
        return []

    def _index(self, tags: tuple[str, ...]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        cached = self._index_cache.get(tags)
        if cached is None:
            pairs = [(i, self._row[t]) for i, t in enumerate(tags) if t in self._row]
            cached = (np.array([p for p, _ in pairs], dtype=np.int64),
                      np.array([r for _, r in pairs], dtype=np.int64))
            self._index_cache[tags] = cached
        return cached
