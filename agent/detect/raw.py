"""Raw samples, for tags shared `raw`: every good sample, sent once per window.

Batched per window (not one message per poll) so that raw sharing costs one
MQTT message per device and window; bad samples travel as None. Plain Python:
this only buffers, a kernel would add nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.events import SAMPLES, Event
from drivers.samples import Quality, SampleBatch


class RawSamples:
    """Collects the samples of `tags` and emits them as one `samples` event per window (a Detector)."""

    def __init__(self, device: str, tags: Sequence[str], window_s: float) -> None:
        self._device = device
        self._tags = frozenset(tags)
        self._window_ns = int(window_s * 1e9)
        self._open_mono_ns: int | None = None
        self._t0_ns = 0
        self._offsets_ms: list[int] = []
        self._values: dict[str, list[float | None]] = {}

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        events = self.on_tick(batch.mono_ns, batch.time_ns)
        if self._open_mono_ns is None:
            self._open_mono_ns, self._t0_ns = batch.mono_ns, batch.time_ns
        row = len(self._offsets_ms)
        self._offsets_ms.append((batch.time_ns - self._t0_ns) // 1_000_000)
        for tag, value, quality in zip(batch.tags, batch.values, batch.quality, strict=True):
            if tag in self._tags:
                column = self._values.setdefault(tag, [None] * row)
                column.extend([None] * (row - len(column)))
                column.append(float(value) if quality == Quality.GOOD else None)
        return events

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        if self._open_mono_ns is None or mono_ns - self._open_mono_ns < self._window_ns:
            return []
        return self.flush(time_ns)

    def flush(self, time_ns: int) -> list[Event]:
        if self._open_mono_ns is None:
            return []
        rows = len(self._offsets_ms)
        tags = {tag: column + [None] * (rows - len(column)) for tag, column in self._values.items()}
        event = Event(SAMPLES, self._device, time_ns,
                      {"t0_ns": self._t0_ns, "dt_ms": self._offsets_ms, "tags": tags})
        self._open_mono_ns, self._offsets_ms, self._values = None, [], {}
        return [event] if tags else []
