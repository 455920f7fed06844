"""Raw samples, for tags shared `raw`: every sample, sent once per window.

Batched per window (not one message per poll) so that raw sharing costs one MQTT message per
device and window. A row is one time at which some of the tags were sampled: every tag of a
polled device at each poll, but only the changed ones of a subscribed OPC UA device, so a
tag's `nil` is either a sample that was not good or no sample at that time; `bad` tells the
two apart (rows where the tag was read and not good). Rows are sent in time order: a
subscription's batches, and polls beside it, need not arrive so. An array value is as many
rows at its time. Plain Python: this only buffers, a kernel would add nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.events import SAMPLES, Event
from drivers.samples import Quality, SampleBatch

_NOT_SAMPLED = object()
"""A cell of a row in which the tag has no sample (sent as nil, and not listed in `bad`)."""


class RawSamples:
    """Collects the samples of `tags` and emits them as one `samples` event per window (a Detector)."""

    def __init__(self, device: str, tags: Sequence[str], window_s: float) -> None:
        self._device = device
        self._tags = frozenset(tags)
        self._window_ns = int(window_s * 1e9)
        self._open_mono_ns: int | None = None
        self._times_ns: list[int] = []
        """Each row's time, in arrival order."""
        self._columns: dict[str, list[object]] = {}
        """Per tag, a cell per row (as far as its last sample): a float, None (not good) or
        _NOT_SAMPLED."""

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        events = self.on_tick(batch.mono_ns, batch.time_ns)
        first = len(self._times_ns)
        rows = 0  # rows this batch makes: the most samples of one tag (an array: several)
        for tag, value, quality in zip(batch.tags, batch.values, batch.quality, strict=True):
            if tag not in self._tags:
                continue
            column = self._columns.setdefault(tag, [])
            if len(column) < first:
                column.extend([_NOT_SAMPLED] * (first - len(column)))
            column.append(float(value) if quality == Quality.GOOD else None)
            rows = max(rows, len(column) - first)
        if rows == 0:  # none of the raw tags: no row
            return events
        if self._open_mono_ns is None:
            self._open_mono_ns = batch.mono_ns
        self._times_ns.extend([batch.time_ns] * rows)
        return events

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        if self._open_mono_ns is None or mono_ns - self._open_mono_ns < self._window_ns:
            return []
        return self.flush(time_ns)

    def flush(self, time_ns: int) -> list[Event]:
        if self._open_mono_ns is None:
            return []
        times = self._times_ns
        order = sorted(range(len(times)), key=times.__getitem__)  # stable: arrays keep theirs
        t0_ns = times[order[0]]
        tags: dict[str, list[float | None]] = {}
        bad: dict[str, list[int]] = {}
        for tag, column in self._columns.items():
            column.extend([_NOT_SAMPLED] * (len(times) - len(column)))
            cells = [column[i] for i in order]
            tags[tag] = [c if isinstance(c, float) else None for c in cells]
            rows = [row for row, c in enumerate(cells) if c is None]
            if rows:
                bad[tag] = rows
        data: dict[str, object] = {"t0_ns": t0_ns,
                                   "dt_ms": [(times[i] - t0_ns) // 1_000_000 for i in order],
                                   "tags": tags}
        if bad:
            data["bad"] = bad
        self._open_mono_ns, self._times_ns, self._columns = None, [], {}
        return [Event(SAMPLES, self._device, time_ns, data)]
