"""Samples outside their tag's `valid_range` become BAD, in front of a device's detectors.

One place for every protocol (drivers/valid_range.py says why a range): the windows count
such a sample as `bad`, the statistics and the rules never see it, and the `quality`
detector reports the tag turning BAD (and GOOD again) as for a sensor the device itself
declares faulty. The log says which value left which range, once per excursion, so that a
technician finds the cause; the value itself is not kept anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import structlog

from agent.detect.base import Detector, DetectorChain
from agent.detect.tag_layouts import TagLayouts
from agent.events import Event
from drivers.samples import Quality, SampleBatch

log = structlog.get_logger(__name__)

F64 = npt.NDArray[np.float64]


class RangeScreenedChain(DetectorChain):
    """A DetectorChain whose batches first have their out-of-range GOOD samples made BAD."""

    def __init__(self, device: str, detectors: Sequence[Detector],
                 ranges: Mapping[str, tuple[float, float]]) -> None:
        super().__init__(detectors)
        self._device = device
        self._ranges = dict(ranges)
        self._bounds: TagLayouts[tuple[F64, F64, npt.NDArray[np.bool_]]] = TagLayouts()
        self._outside: set[str] = set()
        """Tags whose last sample was outside its range (logged when it left and came back)."""

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        low, high, ranged = self._bounds_of(batch.tags)
        values = batch.values
        outside = (values < low) | (values > high)
        if outside.any() or self._outside:
            good = batch.quality == Quality.GOOD
            self._log_changes(batch, outside, good & ranged)
            made_bad = outside & good
            if made_bad.any():
                quality = batch.quality.copy()
                quality[made_bad] = Quality.BAD
                batch = replace(batch, quality=quality)
        return super().on_batch(batch)

    def _bounds_of(self, tags: tuple[str, ...]) -> tuple[F64, F64, npt.NDArray[np.bool_]]:
        """Per position of the batch: the low and high ends, and whether the tag has a range."""
        bounds = self._bounds.get(tags)
        if bounds is None:
            pairs = [self._ranges.get(tag, (-np.inf, np.inf)) for tag in tags]
            bounds = (np.array([p[0] for p in pairs], dtype=np.float64),
                      np.array([p[1] for p in pairs], dtype=np.float64),
                      np.array([tag in self._ranges for tag in tags], dtype=np.bool_))
            self._bounds[tags] = bounds
        return bounds

    def _log_changes(self, batch: SampleBatch, outside: npt.NDArray[np.bool_],
                     looked_at: npt.NDArray[np.bool_]) -> None:
        """A ranged tag's last GOOD sample of the batch (`looked_at`) decides: outside
        (logged once when it leaves its range) or back inside (logged once)."""
        last: dict[str, tuple[bool, float]] = {}
        for j in np.flatnonzero(looked_at).tolist():
            last[batch.tags[j]] = (bool(outside[j]), float(batch.values[j]))
        for tag, (out, value) in last.items():
            if out and tag not in self._outside:
                self._outside.add(tag)
                low, high = self._ranges[tag]
                log.warning("value_out_of_range", device=self._device, tag=tag, value=value,
                            valid_range=[low, high],
                            detail="kept out of every statistic as a BAD sample: check the "
                                   "sensor, its wiring, or the tag's scale and byte order")
            elif not out and tag in self._outside:
                self._outside.discard(tag)
                log.info("value_back_in_range", device=self._device, tag=tag, value=value)
