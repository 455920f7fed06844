"""In-process fakes of the pipeline's boundaries, for tests without sockets or processes.

`ScriptedDriver` is a `drivers.base.Driver` whose connections fail or deliver as a test
scripts them; `RecordingDetector` keeps every batch a device task hands it;
`CapturingSink` is an `EventSink` that keeps the events; `SettableClockSync` is the
kernel's "is the clock synchronized?" answer, set by the test. None of it is imported
by the daemon.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from agent.events import DEVICE_HEALTH, Event
from drivers.base import Driver, ReadPlan
from drivers.errors import DeviceError
from drivers.samples import SampleBatch


@dataclass(frozen=True, slots=True)
class FakePlan:
    """A read plan: `tags` read together every `interval_s`."""

    name: str
    interval_s: float
    tags: tuple[str, ...]


@dataclass
class ScriptedDriver:
    """A driver of `device` whose n-th `connect()` raises `connect_errors[n]` (None: it
    connects); the n-th read of any plan returns n for each of its tags, GOOD."""

    device: str
    plans: Sequence[FakePlan]
    connect_errors: list[DeviceError | None] = field(default_factory=list)
    tag_errors: Mapping[str, DeviceError] = field(default_factory=dict)
    connects: int = 0
    closes: int = 0
    reads: int = 0

    async def connect(self) -> None:
        attempt, self.connects = self.connects, self.connects + 1
        error = self.connect_errors[attempt] if attempt < len(self.connect_errors) else None
        if error is not None:
            raise error

    async def read(self, plan: ReadPlan) -> SampleBatch:
        await asyncio.sleep(0)
        self.reads += 1
        n = len(plan.tags)
        return SampleBatch(self.device, plan.tags, np.full(n, float(self.reads)),
                           np.zeros(n, dtype=np.uint8), time.time_ns(), time.monotonic_ns())

    async def close(self) -> None:
        self.closes += 1


@dataclass
class RecordingDetector:
    """A detector that keeps the batches it is given and emits nothing; `batch_seen` is set
    on each batch (clear it to wait for the next)."""

    batches: list[SampleBatch] = field(default_factory=list)
    batch_seen: asyncio.Event = field(default_factory=asyncio.Event)

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        self.batches.append(batch)
        self.batch_seen.set()
        return []

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        return []

    def flush(self, time_ns: int) -> list[Event]:
        return []

    def values(self, tag: str) -> list[tuple[float, int]]:
        """Every (value, quality) of `tag`, in the order read."""
        return [(float(v), int(q)) for b in self.batches
                for t, v, q in zip(b.tags, b.values, b.quality, strict=True) if t == tag]


@dataclass
class CapturingSink:
    """An `EventSink` (call it with events) that keeps what it is given, in order."""

    events: list[Event] = field(default_factory=list)

    def __call__(self, events: Iterable[Event]) -> None:
        self.events.extend(events)

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def health(self) -> list[tuple[str, str]]:
        """(status, reason) of every `device_health` event, in order."""
        return [(e.data["status"], e.data["reason"]) for e in self.of_kind(DEVICE_HEALTH)]


@dataclass
class SettableClockSync:
    """A `ClockWatch` probe: what the kernel would say of the clock, as the test sets it."""

    synchronized: bool = False
    asked: int = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.synchronized


if TYPE_CHECKING:  # mypy holds the fake to the protocol it stands in for
    _DRIVER: Driver = ScriptedDriver("", [])
