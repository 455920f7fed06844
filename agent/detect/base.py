"""The interface every detector implements: samples in, events out.

A detector owns one device's state. `on_batch` is called once per poll batch
(one kernel call over all its tags), `on_tick` on the monotonic clock so that
time-driven output (a window closing, a sensor that went quiet) does not wait
for the next sample, and `flush` at shutdown so nothing in progress is lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from agent.events import Event
from drivers.samples import SampleBatch


class Detector(Protocol):
    def on_batch(self, batch: SampleBatch) -> list[Event]: ...

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]: ...

    def flush(self, time_ns: int) -> list[Event]: ...


@runtime_checkable
class ScoringDetector(Protocol):
    """A detector whose per-sample scores can be written out offline (`replay --scores`)."""

    def scores(self) -> Mapping[str, float]:
        """The latest score of each row (`rule:tag`, `rule:tag:part`, or `rule` for a group
        of tags), as of the last batch; NaN while a row is warming up."""
        ...


@runtime_checkable
class Pausable(Protocol):
    """A detector whose rules may be waiting for their machine's state (`gate.StateGated`)."""

    def paused(self) -> Mapping[str, str]:
        """Rule name -> the condition it waits for (empty while its rules run)."""
        ...


class DetectorChain:
    """Several detectors of one device behind one Detector: each sees every batch."""

    def __init__(self, detectors: Sequence[Detector]) -> None:
        self._detectors = tuple(detectors)

    @property
    def members(self) -> tuple[Detector, ...]:
        return self._detectors

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        return [e for d in self._detectors for e in d.on_batch(batch)]

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        return [e for d in self._detectors for e in d.on_tick(mono_ns, time_ns)]

    def flush(self, time_ns: int) -> list[Event]:
        return [e for d in self._detectors for e in d.flush(time_ns)]

    def scores(self) -> Mapping[str, float]:
        """Every scoring member's scores, merged (their keys carry the rule name)."""
        merged: dict[str, float] = {}
        for d in self._detectors:
            if isinstance(d, ScoringDetector):
                merged.update(d.scores())
        return merged
