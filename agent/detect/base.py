"""The interface every detector implements: samples in, events out.

A detector owns one device's state. `on_batch` is called once per poll batch
(one kernel call over all its tags), `on_tick` on the monotonic clock so that
time-driven output (a window closing, a sensor that went quiet) does not wait
for the next sample, and `flush` at shutdown so nothing in progress is lost.
"""

from __future__ import annotations

from typing import Protocol

from agent.events import Event
from drivers.samples import SampleBatch


class Detector(Protocol):
    def on_batch(self, batch: SampleBatch) -> list[Event]: ...

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]: ...

    def flush(self, time_ns: int) -> list[Event]: ...
