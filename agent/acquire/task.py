"""One device's task, and the ticker: connect, poll on schedule, report each change of status.

A device task never dies of a device fault: it sends a `device_health` event on each change
of status and reconnects with exponential backoff and jitter; a bug in it is logged with its
traceback, reported the same way, and the device is restarted. The other devices never wait
for it. The supervisor (`agent/supervisor/runtime.py`) starts and stops these tasks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import structlog

from agent.acquire.backoff import Backoff
from agent.clock import BOOT_ID, ClockWatch
from agent.detect.base import Detector
from agent.events import CLOCK, DEVICE_HEALTH, GATEWAY_DEVICE, Event
from drivers.base import DeviceNotice, Driver, StreamingDriver
from drivers.errors import DeviceError, DeviceException

log = structlog.get_logger(__name__)

EventSink = Callable[[Iterable[Event]], None]

DEGRADED = "degraded"
"""Connected and read, but not wholly: some tags refused, or a pushed stream stalled."""


@dataclass
class DeviceHealth:
    """What the supervisor last reported about a device: a health event goes out on each change."""

    device: str
    status: str = "starting"
    reason: str = ""

    detail: str = ""

    def change(self, status: str, reason: str = "", detail: str = "", address: str | None = None) -> list[Event]:
        # A device that stays down for another reason's detail (another address timing out) is
        # not news; a degraded device whose set of refused tags changed is.
        same = (status, reason) == (self.status, self.reason)
        if same and (status != DEGRADED or detail == self.detail):
            return []
        self.status, self.reason, self.detail = status, reason, detail
        if status == "up":
            log.info("device_up", device=self.device)
        elif status == DEGRADED:
            log.warning("device_degraded", device=self.device, reason=reason, detail=detail)
        else:
            log.warning("device_down", device=self.device, reason=reason, detail=detail, address=address)
        data: dict[str, object] = {"status": status, "reason": reason, "detail": detail}
        if address is not None:
            data["address"] = address
        return [Event(kind=DEVICE_HEALTH, device=self.device, time_ns=time.time_ns(), data=data)]


async def supervise_device(
    driver: Driver, detector: Detector, sink: EventSink, backoff: Backoff | None = None,
    status: DeviceHealth | None = None,
) -> None:
    """Connect, poll, and on any failure report it and reconnect after a backoff; until cancelled.

    `status` is given by a supervisor that reports it elsewhere (heartbeat, `edge-agent status`).
    """
    backoff = backoff or Backoff()
    status = status or DeviceHealth(driver.device)
    while True:
        cap_s: float | None = None
        try:
            await driver.connect()
            if isinstance(driver, StreamingDriver):
                await _poll_and_stream(driver, detector, sink, status, backoff)
            else:
                await _poll(driver, detector, sink, status, backoff)
        except DeviceError as exc:
            sink(status.change("down", exc.reason, exc.detail, exc.address))
            if isinstance(exc, DeviceException):
                cap_s = answered_retry_s(driver)
        except Exception as exc:  # a bug: keep the other devices running, restart this one
            log.exception("device_task_failed", device=driver.device)
            sink(status.change("down", "internal_error", f"{type(exc).__name__}: {exc}"))
        finally:
            await driver.close()
        await asyncio.sleep(backoff.next_delay_s(cap_s))


ANSWERED_RETRY_POLLS = 3
"""A device that answers with an exception is retried within this many of its poll intervals."""


def answered_retry_s(driver: Driver) -> float | None:
    """The longest wait before retrying a device that answered with an exception: it is there
    and answering, so it is back as soon as its fault clears (the line costs nothing to try)."""
    intervals = [plan.interval_s for plan in driver.plans]
    return ANSWERED_RETRY_POLLS * min(intervals) if intervals else None


def _never() -> bool:
    return False


async def _poll(
    driver: Driver, detector: Detector, sink: EventSink, status: DeviceHealth, backoff: Backoff,
    held: Callable[[], bool] = _never,
) -> None:
    """Read each plan on its own schedule (monotonic clock); missed slots are skipped, not queued.

    While `held()`, a read does not set the status: something else (a stalled stream) owns it.
    """
    plans = driver.plans
    if not plans:  # every tag is pushed
        await asyncio.Future()
    now = time.monotonic()
    due = [now] * len(plans)
    while True:
        i = min(range(len(plans)), key=due.__getitem__)
        delay = due[i] - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        batch = await driver.read(plans[i])
        if not held():
            sink(_read_status(driver, status))
        backoff.reset()
        sink(detector.on_batch(batch))
        interval = plans[i].interval_s
        due[i] += interval
        late = time.monotonic() - due[i]
        if late > 0:
            due[i] += interval * (int(late // interval) + 1)


async def _poll_and_stream(
    driver: StreamingDriver, detector: Detector, sink: EventSink, status: DeviceHealth,
    backoff: Backoff,
) -> None:
    """Poll the plans and consume the pushed stream side by side; the first failure of either
    ends both (the caller reports it and reconnects). Connected is up at once (pushed values may
    not come for a while); a stalled-stream notice holds the status until the stream delivers."""
    notice: list[DeviceNotice] = []

    async def consume() -> None:
        async for item in driver.stream():
            if isinstance(item, DeviceNotice):
                notice[:] = [item]
                sink(status.change(item.status, item.reason, item.detail))
                continue
            notice.clear()
            sink(_read_status(driver, status))
            backoff.reset()
            sink(detector.on_batch(item))
        raise DeviceError(driver.device, "the data stream ended")

    sink(_read_status(driver, status))
    tasks = {asyncio.create_task(_poll(driver, detector, sink, status, backoff,
                                       held=lambda: bool(notice))),
             asyncio.create_task(consume())}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _read_status(driver: Driver, status: DeviceHealth) -> list[Event]:
    """Up, or degraded while the device refuses some tags (named, with their addresses)."""
    errors = driver.tag_errors
    if not errors:
        return status.change("up")
    reasons = sorted({error.reason for error in errors.values()})
    detail = "; ".join(error.detail for _, error in sorted(errors.items()))
    detail += "; the other tags go on being read"
    return status.change(DEGRADED, ",".join(reasons), detail)


async def tick_detectors(
    detectors: Sequence[Detector] | Callable[[], Iterable[Detector]], sink: EventSink,
    period_s: float | Callable[[], float], clock: ClockWatch,
) -> None:
    """Give detectors the time, so that windows close even when a device goes quiet;
    and say when the wall clock becomes synchronized.

    `detectors` and `period_s` may be callables: a reload changes both while this runs.
    """
    synced = clock.synchronized()
    while True:
        await asyncio.sleep(period_s() if callable(period_s) else period_s)
        mono_ns, time_ns = time.monotonic_ns(), time.time_ns()
        for detector in (detectors() if callable(detectors) else detectors):
            sink(detector.on_tick(mono_ns, time_ns))
        if not synced and clock.synchronized():
            synced = True
            log.info("clock_synchronized", boot=BOOT_ID)
            sink([clock_event()])


def clock_event() -> Event:
    """The mapping from this boot's monotonic clock to UTC, now that UTC is right."""
    mono_ns, time_ns = time.monotonic_ns(), time.time_ns()
    return Event(CLOCK, GATEWAY_DEVICE, time_ns, {"boot": BOOT_ID, "mono": mono_ns})
