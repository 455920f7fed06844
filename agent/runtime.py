"""The supervisor: runs devices, detectors, store and uplink, and stops them in order.

Data flows one way: driver -> SampleBatch -> detector -> Event -> store -> uplink.
Every long-lived task lives in one TaskGroup owned by `run_agent`. A device task
never dies of a device fault: it reports a device-health event on each change of
status and reconnects with backoff; a bug in it is logged with its traceback,
reported the same way, and the device is restarted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import structlog

from agent.backoff import Backoff
from agent.clock import BOOT_ID, ClockWatch
from agent.config import LoadedConfig
from agent.detect import Detector
from agent.devices import make_detector, make_driver
from agent.events import CLOCK, DEVICE_HEALTH, GATEWAY_DEVICE, Event
from agent.sharing import SharingPolicy
from agent.store import EventStore
from agent.uplink import MqttUplink
from drivers.base import Driver
from drivers.errors import DeviceError

log = structlog.get_logger(__name__)

EventSink = Callable[[Iterable[Event]], None]

SHUTDOWN_DRAIN_S = 2.0
"""How long a stopping agent keeps sending before it disconnects (the rest stays stored)."""


@dataclass
class DeviceStatus:
    """What the supervisor last reported about a device: a health event goes out on each change."""

    device: str
    status: str = "starting"
    reason: str = ""

    def change(self, status: str, reason: str = "", detail: str = "", address: str | None = None) -> list[Event]:
        if (status, reason) == (self.status, self.reason):
            return []
        self.status, self.reason = status, reason
        if status == "up":
            log.info("device_up", device=self.device)
        else:
            log.warning("device_down", device=self.device, reason=reason, detail=detail, address=address)
        data: dict[str, object] = {"status": status, "reason": reason, "detail": detail}
        if address is not None:
            data["address"] = address
        return [Event(kind=DEVICE_HEALTH, device=self.device, time_ns=time.time_ns(), data=data)]


async def supervise_device(
    driver: Driver, detector: Detector, sink: EventSink, backoff: Backoff | None = None
) -> None:
    """Connect, poll, and on any failure report it and reconnect after a backoff; until cancelled."""
    backoff = backoff or Backoff()
    status = DeviceStatus(driver.device)
    while True:
        try:
            await driver.connect()
            await _poll(driver, detector, sink, status, backoff)
        except DeviceError as exc:
            sink(status.change("down", exc.reason, exc.detail, exc.address))
        except Exception as exc:  # a bug: keep the other devices running, restart this one
            log.exception("device_task_failed", device=driver.device)
            sink(status.change("down", "internal_error", f"{type(exc).__name__}: {exc}"))
        finally:
            await driver.close()
        await asyncio.sleep(backoff.next_delay_s())


async def _poll(
    driver: Driver, detector: Detector, sink: EventSink, status: DeviceStatus, backoff: Backoff
) -> None:
    """Read each plan on its own schedule (monotonic clock); missed slots are skipped, not queued."""
    plans = driver.plans
    now = time.monotonic()
    due = [now] * len(plans)
    while True:
        i = min(range(len(plans)), key=due.__getitem__)
        delay = due[i] - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        batch = await driver.read(plans[i])
        sink(status.change("up"))
        backoff.reset()
        sink(detector.on_batch(batch))
        interval = plans[i].interval_s
        due[i] += interval
        late = time.monotonic() - due[i]
        if late > 0:
            due[i] += interval * (int(late // interval) + 1)


async def tick_detectors(
    detectors: Sequence[Detector], sink: EventSink, period_s: float, clock: ClockWatch
) -> None:
    """Give detectors the time, so that windows close even when a device goes quiet;
    and say when the wall clock becomes synchronized."""
    synced = clock.synchronized()
    while True:
        await asyncio.sleep(period_s)
        mono_ns, time_ns = time.monotonic_ns(), time.time_ns()
        for detector in detectors:
            sink(detector.on_tick(mono_ns, time_ns))
        if not synced and clock.synchronized():
            synced = True
            log.info("clock_synchronized", boot=BOOT_ID)
            sink([clock_event()])


def clock_event() -> Event:
    """The mapping from this boot's monotonic clock to UTC, now that UTC is right."""
    mono_ns, time_ns = time.monotonic_ns(), time.time_ns()
    return Event(CLOCK, GATEWAY_DEVICE, time_ns, {"boot": BOOT_ID, "mono": mono_ns})


async def run_agent(loaded: LoadedConfig, stop: asyncio.Event) -> None:
    """Run until `stop` is set, then: stop polling, close windows, commit, send briefly, disconnect."""
    cfg = loaded.config
    clock = ClockWatch(cfg.gateway.clock)
    store = await EventStore.open(
        cfg.store_path,
        cfg.gateway.id,
        commit_interval_s=cfg.store.commit_interval_s,
        commit_max_events=cfg.store.commit_max_events,
        max_bytes=cfg.store.max_bytes,
        max_age_s=cfg.store.max_age_days * 86400,
        clock_synchronized=clock.synchronized,
    )
    try:  # reads the password file or credential: a failure must still close the store
        uplink = MqttUplink(cfg.mqtt, cfg.gateway, store, config_sha256=loaded.sha256)
    except BaseException:
        await store.close()
        raise
    devices = [(make_driver(d), make_detector(d, cfg.aggregate.window_s)) for d in cfg.devices]
    policy = SharingPolicy(cfg.devices)

    def share(events: Iterable[Event]) -> None:
        """The one gate between detection and the store: only shared data is queued, and
        marked when the clock is not to be trusted yet."""
        shared = [s for event in events if (s := policy.apply(event)) is not None]
        if shared and not clock.synchronized():
            shared = [replace(e, mono_ns=clock.mono_of(e.time_ns)) for e in shared]
        store.put(shared)

    detectors = [detector for _, detector in devices]
    if not clock.synchronized():
        log.warning("clock_not_synchronized", boot=BOOT_ID,
                    detail="events are marked until NTP has set the clock (gateway.clock: ntp)")
    log.info("agent_started", gateway=cfg.gateway.id, devices=len(devices),
             config=str(loaded.path), config_sha256=loaded.sha256[:12], store=str(store.path))
    try:
        async with asyncio.TaskGroup() as tasks:
            writer = tasks.create_task(store.writer(), name="store-writer")
            sender = tasks.create_task(uplink.run(), name="uplink")
            producers = [
                tasks.create_task(supervise_device(driver, detector, share), name=driver.device)
                for driver, detector in devices
            ]
            producers.append(tasks.create_task(
                tick_detectors(detectors, share, min(1.0, cfg.aggregate.window_s / 4), clock),
                name="ticker",
            ))
            await stop.wait()
            log.info("agent_stopping")
            for task in producers:
                task.cancel()
            await asyncio.wait(producers)
            now_ns = time.time_ns()
            for detector in detectors:
                share(detector.flush(now_ns))
            await store.flush()
            await uplink.drain(SHUTDOWN_DRAIN_S)
            sender.cancel()
            writer.cancel()
    finally:
        await uplink.close()
        await store.close()
        log.info("agent_stopped", gateway=cfg.gateway.id)
