"""A device task against a scripted driver, in process: it reports each change of health
once, reconnects after a failure, closes the driver every time, and survives a bug."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from agent.acquire.backoff import Backoff
from agent.acquire.task import DeviceHealth, supervise_device
from agent.detect.base import Detector
from agent.events import Event
from agent.testing import (
    CapturingSink,
    FakePlan,
    RecordingDetector,
    ScriptedDriver,
    wait_until_async,
)
from drivers.errors import DeviceUnreachable
from drivers.samples import SampleBatch

FAST = Backoff(initial_s=0.01, max_s=0.02)


async def _run_until(driver: ScriptedDriver, detector: Detector, sink: CapturingSink,
                     done: Callable[[], bool]) -> None:
    task = asyncio.create_task(supervise_device(driver, detector, sink, FAST,
                                                DeviceHealth(driver.device)))
    try:
        await wait_until_async(done, timeout_s=5, what="the scripted outcome")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_device_down_twice_is_reported_once_then_up_and_read() -> None:
    refused = DeviceUnreachable("press", "connection refused", address="10.0.0.5:502")
    driver = ScriptedDriver("press", [FakePlan("fast", 0.01, ("p",))],
                            connect_errors=[refused, refused])
    seen, sink = RecordingDetector(), CapturingSink()
    await _run_until(driver, seen, sink, lambda: len(seen.batches) >= 3)
    assert sink.health() == [("down", refused.reason), ("up", "")]
    assert driver.connects == 3 and driver.closes >= 2  # closed after each failure
    assert [v for v, _ in seen.values("p")][:3] == [1.0, 2.0, 3.0]


class Broken(RecordingDetector):
    """A detector with a bug on its second batch."""

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        super().on_batch(batch)
        if len(self.batches) == 2:
            raise ZeroDivisionError("a bug")
        return []


async def test_a_bug_in_a_detector_restarts_the_device_instead_of_ending_it() -> None:
    driver = ScriptedDriver("press", [FakePlan("fast", 0.01, ("p",))])
    broken, sink = Broken(), CapturingSink()
    await _run_until(driver, broken, sink, lambda: len(broken.batches) >= 4)
    assert sink.health()[:3] == [("up", ""), ("down", "internal_error"), ("up", "")]
    assert "ZeroDivisionError: a bug" in sink.of_kind("device_health")[1].data["detail"]
    assert driver.connects >= 2 and driver.closes >= 1


@pytest.mark.parametrize("attempts", [1, 5])
def test_backoff_stays_within_its_cap(attempts: int) -> None:
    backoff = Backoff(initial_s=1.0, max_s=4.0)
    delays = [backoff.next_delay_s() for _ in range(attempts)]
    assert all(0.5 <= d <= 4.0 for d in delays)
    backoff.reset()
    assert 0.5 <= backoff.next_delay_s() <= 1.0
