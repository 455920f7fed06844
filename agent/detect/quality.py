"""Quality changes: an event when a tag's sample quality class changes (every protocol).

A sensor that turns BAD (a broken wire, a PLC reporting BadSensorFailure) or UNCERTAIN
(a substituted value) is news in itself, and its samples are kept out of the aggregates:
this makes the change visible instead of leaving only a drop in `n`. Vectorised with numpy
over the batch (one comparison per batch, no kernel needed: no arithmetic per sample).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agent.detect.tag_layouts import TagLayouts
from agent.events import QUALITY, Event
from drivers.samples import Quality, SampleBatch

_UNSEEN = 255
_NAMES = {int(q): q.name.lower() for q in Quality}


class QualityChanges:
    """One `quality` event per batch in which some tags' quality class changed (a Detector).

    A tag first seen GOOD says nothing; first seen UNCERTAIN or BAD is reported (from None).
    Of several samples of a tag in a batch the last counts; a text value is a GOOD sample.
    """

    def __init__(self, device: str, tags: Sequence[str]) -> None:
        self._device = device
        self._tags = tuple(tags)
        self._row = {tag: i for i, tag in enumerate(self._tags)}
        self._last: npt.NDArray[np.uint8] = np.full(len(self._tags), _UNSEEN, dtype=np.uint8)
        self._index_cache: TagLayouts[npt.NDArray[np.int64]] = TagLayouts()

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        now = self._last.copy()
        if batch.tags:
            now[self._index(batch.tags)] = batch.quality  # repeated rows: the last one wins
        for tag in batch.texts:
            if tag in self._row:
                now[self._row[tag]] = Quality.GOOD
        changed = np.flatnonzero(now != self._last)
        previous, self._last = self._last, now
        tags: dict[str, dict[str, str | None]] = {}
        for row in changed:
            before = int(previous[row])
            if before == _UNSEEN and now[row] == Quality.GOOD:
                continue
            tags[self._tags[row]] = {"quality": _NAMES[int(now[row])],
                                     "previous": _NAMES.get(before)}
        if not tags:
            return []
        return [Event(QUALITY, self._device, batch.time_ns, {"tags": tags})]

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        return []

    def flush(self, time_ns: int) -> list[Event]:
        return []

    def _index(self, tags: tuple[str, ...]) -> npt.NDArray[np.int64]:
        index = self._index_cache.get(tags)
        if index is None:
            index = np.array([self._row[t] for t in tags], dtype=np.int64)
            self._index_cache[tags] = index
        return index
