"""The supervisor: runs devices, detectors, store and uplink, and stops them in order.

Data flows one way: driver -> SampleBatch -> detector -> Event -> store -> uplink.
Every long-lived task lives in one TaskGroup owned by `run_agent`; the `Supervisor`
starts and stops the device tasks (`agent/acquire/task.py`) and the uplink in it, at start
and on a reload (SIGHUP), sends heartbeats, serves `edge-agent status` and the control
socket (`edge-agent relearn`), and tells systemd how it is doing (`agent/service/systemd.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from agent.acquire.driver import make_driver
from agent.acquire.task import (
    DeviceHealth,
    supervise_device,
    tick_detectors,
)
from agent.clock import BOOT_ID, ClockWatch
from agent.config import AgentConfig, ConfigError, LoadedConfig, load_config
from agent.config.models import DeviceConfig
from agent.detect.base import Detector
from agent.detect.device import learned_of, make_detector
from agent.detect.kernels import warm_up
from agent.detect.kernels.jit import mode as kernels_form
from agent.detect.kernels.jit import why_not_aot
from agent.detect.learned_state import KeepLearned
from agent.detect.open_windows import OpenWindows
from agent.detect.state_file import wait_all_saved
from agent.events import GATEWAY_DEVICE, HEARTBEAT, Event
from agent.service.control import CONTROL_SOCKET, ControlServer, refusal
from agent.service.prometheus import MetricsServer
from agent.service.relearn import COMMAND as RELEARN
from agent.service.relearn import RelearnError, forget_running
from agent.service.status import STATUS_SOCKET, StatusServer, heartbeat_data, process_usage
from agent.service.systemd import Notifier
from agent.store import EventStore
from agent.store.sharing import SharingPolicy
from agent.supervisor.reload import ReloadPlan, plan_reload
from agent.supervisor.remote import RemoteControl
from agent.supervisor.tasks import cancel_and_wait
from agent.uplink.client import CommandHandler, MqttUplink
from agent.uplink.credentials import CredentialError

__all__ = ["Supervisor", "run_agent"]

log = structlog.get_logger(__name__)

SHUTDOWN_DRAIN_S = 2.0
"""How long a stopping agent keeps sending before it disconnects (the rest stays stored)."""

HEARTBEAT_CHANGE_POLL_S = 0.5
"""How often the heartbeat task looks for a changed device status or uplink state."""


@dataclass
class RunningDevice:
    config: DeviceConfig
    detector: Detector
    status: DeviceHealth
    task: asyncio.Task[None]
    learned: KeepLearned | None
    """What its rule detectors learned (None: it has no rules), inside `detector`."""


def make_uplink(loaded: LoadedConfig, store: EventStore,
                remote: RemoteControl | None) -> MqttUplink:
    """The uplink of a configuration; with remote configuration, also its command topic.
    Raises `CredentialError` for an unusable password or TLS file."""
    cfg = loaded.config
    handler: CommandHandler | None = remote.submit if remote is not None else None
    topic = cfg.remote.topic.format(site=cfg.gateway.site, gateway=cfg.gateway.id)
    if cfg.mqtt.format == "sparkplug":  # protobuf is imported only by a gateway that uses it
        from agent.uplink.sparkplug.uplink import SparkplugUplink

        return SparkplugUplink(cfg, store, config_sha256=loaded.sha256,
                               command_topic=topic if handler else None, on_command=handler)
    return MqttUplink(cfg.mqtt, cfg.gateway, store, config_sha256=loaded.sha256,
                      command_topic=topic if handler else None, on_command=handler)


class Supervisor:
    """The running agent: its devices, its uplink, the store they share, and the changes a
    reload makes to them. Every task it starts lives in the TaskGroup of `run_agent`."""

    def __init__(
        self, loaded: LoadedConfig, store: EventStore, uplink: MqttUplink, clock: ClockWatch,
        tasks: asyncio.TaskGroup, notifier: Notifier, remote: RemoteControl | None = None,
    ) -> None:
        self.loaded = loaded
        self.store = store
        self.uplink = uplink
        self.clock = clock
        self.notifier = notifier
        self._tasks = tasks
        self._policy = SharingPolicy(loaded.config.devices)
        self._devices: dict[str, RunningDevice] = {}
        self._uplink_task: asyncio.Task[None] | None = None
        self.open_windows = OpenWindows(loaded.config.gateway.state_dir)
        """Every device's open window, listed on disk for the start after a power cut."""
        self._started_mono = time.monotonic()
        self.status_socket = loaded.config.gateway.state_dir / STATUS_SOCKET
        self.control_socket = loaded.config.gateway.state_dir / CONTROL_SOCKET
        self._metrics: MetricsServer | None = None
        self.started = asyncio.Event()
        """Every configured device started: a control request waits for it."""
        self.stopping = False
        self._changing = asyncio.Lock()
        """Held by a reload and by a control request: neither sees the other half done."""
        self.remote = remote
        self.restarting = asyncio.Event()
        """Set when a pushed configuration needs a restart: run_agent stops, the CLI exits
        with EXIT_RESTART and systemd starts the agent again."""

    @property
    def config(self) -> AgentConfig:
        return self.loaded.config

    @property
    def uplink_connected(self) -> bool:
        return self.uplink.connected

    def restart(self) -> None:
        self.restarting.set()

    def share(self, events: Iterable[Event]) -> None:
        """The one gate between detection and the store: only shared data is queued, and
        marked when the clock is not to be trusted yet."""
        shared = [s for event in events if (s := self._policy.apply(event)) is not None]
        if shared and not self.clock.synchronized():
            shared = [replace(e, mono_ns=self.clock.mono_of(e.time_ns)) for e in shared]
        self.store.put(shared)

    def detectors(self) -> list[Detector]:
        return [d.detector for d in self._devices.values()]

    def tick_period_s(self) -> float:
        return min(1.0, self.config.aggregate.window_s / 4)

    # --- devices ----------------------------------------------------------------------

    def start_device(self, config: DeviceConfig) -> None:
        driver = make_driver(config, self.config.gateway.state_dir)
        detector = make_detector(self.config, config, keep_windows=True,
                                 open_windows=self.open_windows)
        status = DeviceHealth(config.name)
        task = self._tasks.create_task(
            supervise_device(driver, detector, self.share, status=status), name=config.name
        )
        self._devices[config.name] = RunningDevice(config, detector, status, task,
                                                   learned_of(detector))

    async def stop_devices(self, names: Iterable[str]) -> None:
        """Stop polling them, then close their open windows into events (nothing is lost)."""
        stopping = [self._devices.pop(name) for name in names if name in self._devices]
        if not stopping:
            return
        await cancel_and_wait([d.task for d in stopping])
        now_ns = time.time_ns()
        for device in stopping:
            self.share(device.detector.flush(now_ns))

    async def stop_all_devices(self) -> None:
        await self.stop_devices(list(self._devices))

    def report_lost_windows(self) -> None:
        """Once every device has started (and resumed what RAM kept): the windows the last
        run left open that none resumed, in a `windows_lost` event. A device shared `none`
        is not named; a device no longer configured neither (its share is unknown): both are
        logged and counted."""
        named = {d.name for d in self.config.devices if d.share != "none"}
        self.share(e for e in [self.open_windows.report(named)] if e is not None)

    async def keep_open_windows(self) -> None:
        """List the open windows on disk when they change (at most about once a window)."""
        while True:
            await asyncio.sleep(self.tick_period_s())
            self.open_windows.save_if_due()

    def open_windows_saved(self) -> None:
        """At a clean stop, after every window was flushed: the file lists none."""
        self.open_windows.save_now()

    async def close(self) -> None:
        """Close the current uplink, on any path (a reload may have replaced the first)."""
        await self.uplink.close()

    # --- uplink -----------------------------------------------------------------------

    def start_uplink(self) -> None:
        self._uplink_task = self._tasks.create_task(self.uplink.run(), name="uplink")

    async def drain_uplink(self, timeout_s: float) -> None:
        """Send what is stored (bounded): the last events before a stop."""
        await self.uplink.drain(timeout_s)

    async def stop_uplink(self, drain_s: float) -> None:
        """Stop publishing; wait (bounded) for the PUBACKs of what is in flight; disconnect.

        What is not acknowledged stays in the store and is sent again by the next uplink.
        """
        if self._uplink_task is not None:
            await cancel_and_wait([self._uplink_task])
            self._uplink_task = None
        deadline = time.monotonic() + drain_s
        # The uplink has no "all acknowledged" event to wait on; polling is bounded by drain_s.
        uplink = self.uplink
        while uplink.inflight and uplink.connected and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await self.uplink.close()

    # --- health -----------------------------------------------------------------------

    def device_statuses(self) -> dict[str, tuple[str, str]]:
        return {name: (d.status.status, d.status.reason) for name, d in self._devices.items()}

    async def snapshot(self, reason: str = "status") -> dict[str, Any]:
        """What `heartbeat` events and `edge-agent status` report (agent/service/status.py)."""
        stats = await self.store.stats()
        cpu_s, rss = await asyncio.to_thread(process_usage)
        data = heartbeat_data(
            reason=reason, uptime_s=time.monotonic() - self._started_mono,
            config_sha256=self.loaded.sha256, devices=self.device_statuses(), stats=stats,
            pending=self.store.pending_count, uplink_state=self.uplink.state,
            uplink_error=self.uplink.last_error, inflight=self.uplink.inflight,
            cpu_s=cpu_s, rss_bytes=rss, now_ns=time.time_ns(),
            bytes_written=self.store.bytes_written(),
            bytes_written_per_day=self.store.bytes_written_per_day(),
            windows_lost=self.open_windows.lost_total,
        )
        if self.remote is not None:
            data["remote"] = {"config_version": self.remote.config_version,
                              "refused": self.remote.refused_total}
        return data

    async def status_document(self) -> dict[str, Any]:
        """The snapshot plus what a person on site asks after a repair or a restart (not in the
        heartbeat): which process and file, whether each device's rules learn or have learned and
        since when, and which wait for their machine's state."""
        learning = {name: progress for name, d in self._devices.items()
                    if d.learned is not None and (progress := d.learned.progress()) is not None}
        paused = {name: waiting for name, d in self._devices.items()
                  if d.learned is not None and (waiting := d.learned.paused())}
        return {"gateway": self.config.gateway.id, "pid": os.getpid(),
                "config": str(self.loaded.path), **await self.snapshot(),
                "detectors": learning, "paused": paused}

    async def status_shared(self) -> dict[str, Any]:
        """The status document as it may leave the site (a remote `status` command): a
        device shared as `none` is not even named."""
        document = await self.status_document()
        for key in ("devices", "detectors", "paused"):
            document[key] = self._shared_devices_only(document[key])
        return document

    def _shared_devices_only(self, by_device: dict[str, Any]) -> dict[str, Any]:
        """What leaves the site: a device shared as `none` is not even named."""
        return {name: value for name, value in by_device.items()
                if self._policy.device_share(name) != "none"}

    # --- control ----------------------------------------------------------------------

    async def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """A request on the control socket (agent/service/control.py): `relearn` (agent/service/relearn.py).

        Answered once the forgetting is on disk: a power cut after the command returned
        does not bring back what it forgot.
        """
        if request.get("command") != RELEARN:
            return refusal(f"unknown command {request.get('command')!r}", 2)
        await self.started.wait()
        async with self._changing:
            if self.stopping:
                return refusal("the agent is stopping; run the command again once it has "
                               "stopped")
            learned = {name: d.learned for name, d in self._devices.items()
                       if d.learned is not None}
            try:
                answer, events = forget_running(self.config, learned, request, time.time_ns())
            except RelearnError as exc:
                return refusal(str(exc), 2)
            self.share(events)
            await asyncio.to_thread(wait_all_saved)
            return answer

    async def heartbeat(self) -> None:
        """A `heartbeat` event every `health.heartbeat_s`, and at once when a device's status
        or the uplink's state changes (looked at every HEARTBEAT_CHANGE_POLL_S)."""
        last_sent = -float("inf")
        last_seen: object = None
        while True:
            seen = (self.device_statuses(), self.uplink.state)
            now = time.monotonic()
            if seen != last_seen or now - last_sent >= self.config.health.heartbeat_s:
                reason = ("start" if last_seen is None
                          else "change" if seen != last_seen else "periodic")
                data = await self.snapshot(reason)
                data["devices"] = self._shared_devices_only(data["devices"])
                self.share([Event(HEARTBEAT, GATEWAY_DEVICE, time.time_ns(), data)])
                last_sent, last_seen = now, seen
            await asyncio.sleep(min(HEARTBEAT_CHANGE_POLL_S, self.config.health.heartbeat_s))

    async def start_metrics(self) -> None:
        """The Prometheus endpoint, if `health.prometheus_port` asks for one."""
        health = self.config.health
        if health.prometheus_port is None:
            return
        self._metrics = MetricsServer(health.prometheus_host, health.prometheus_port,
                                      self.snapshot, self.config.gateway.id)
        await self._metrics.start()

    async def stop_metrics(self) -> None:
        if self._metrics is not None:
            await self._metrics.close()
            self._metrics = None

    def running_summary(self) -> str:
        return f"running: {len(self._devices)} devices, config {self.loaded.sha256[:12]}"

    # --- reload -----------------------------------------------------------------------

    async def reload(self) -> tuple[ReloadPlan | None, list[str]]:
        """Re-read the configuration file and apply what changed (agent/supervisor/reload.py).

        An invalid file changes nothing: its problems are logged and the agent runs on.
        Returns the plan applied, or None and the problems.
        """
        async with self._changing:
            return await self._reload()

    async def _reload(self) -> tuple[ReloadPlan | None, list[str]]:
        self.notifier.reloading()
        try:
            loaded = await asyncio.to_thread(load_config, self.loaded.path)
        except ConfigError as exc:
            for line in exc.lines:
                log.error("config_reload_rejected", config=str(self.loaded.path), problem=line)
            self.notifier.ready(self.running_summary() + " (reload rejected)")
            return None, exc.lines
        plan = plan_reload(self.config, loaded.config)
        for line in plan.refused:
            log.error("config_change_refused", config=str(loaded.path), problem=line)
        new_uplink: MqttUplink | None = None
        if plan.mqtt_changed:
            try:  # before anything changes: an unusable password file keeps the old uplink
                new_uplink = make_uplink(LoadedConfig(plan.config, loaded.path, loaded.sha256),
                                         self.store, self.remote)
            except CredentialError as exc:
                log.error("config_reload_rejected", config=str(loaded.path), problem=str(exc))
                self.notifier.ready(self.running_summary() + " (reload rejected)")
                return None, [str(exc)]
        await self.stop_devices(plan.stop)  # flushed through the old sharing policy
        old_health = self.config.health
        self.loaded = LoadedConfig(plan.config, loaded.path, loaded.sha256)
        endpoint = (plan.config.health.prometheus_host, plan.config.health.prometheus_port)
        if endpoint != (old_health.prometheus_host, old_health.prometheus_port):
            await self.stop_metrics()
            await self.start_metrics()
        self._policy = SharingPolicy(plan.config.devices)
        by_name = {d.name: d for d in plan.config.devices}
        # A rule of a new kind: its kernels are loaded off the event loop before it polls.
        await asyncio.to_thread(warm_up, {rule.kind for rule in plan.config.detectors})
        for name in plan.start:
            self.start_device(by_name[name])
        if new_uplink is not None:
            await self.stop_uplink(SHUTDOWN_DRAIN_S)
            self.uplink = new_uplink
            self.start_uplink()
        log.info("config_reloaded", config=str(loaded.path), config_sha256=loaded.sha256,
                 kept=plan.keep, started=plan.start, stopped=plan.stop,
                 mqtt_restarted=plan.mqtt_changed, refused=len(plan.refused))
        self.notifier.ready(self.running_summary())
        return plan, []


async def _wait_any(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_agent(
    loaded: LoadedConfig, stop: asyncio.Event, reload: asyncio.Event | None = None,
    notifier: Notifier | None = None,
) -> bool:
    """Run until `stop` is set, then: stop polling, close windows, commit, send briefly, disconnect.

    Each time `reload` is set, the configuration is read again and applied. Every resource
    enters one exit stack as it starts, so it stops in reverse order on every path. True when
    it stopped to restart (a pushed configuration that applies at start).
    """
    cfg = loaded.config
    reload = reload or asyncio.Event()
    notifier = notifier or Notifier()
    clock = ClockWatch(cfg.gateway.clock)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(notifier.close)
        store = await stack.enter_async_context(await EventStore.open(
            cfg.store_path, cfg.gateway.id, commit_interval_s=cfg.store.commit_interval_s,
            commit_max_events=cfg.store.commit_max_events,
            outage_commit_interval_s=cfg.store.outage_commit_interval_s,
            max_bytes=cfg.store.max_bytes,
            max_age_s=cfg.store.max_age_days * 86400, clock_synchronized=clock.synchronized))
        remote = (RemoteControl(cfg.remote, cfg.gateway.id, cfg.gateway.state_dir)
                  if cfg.remote.enabled else None)
        # Reads the password file or credential: a failure still closes the store.
        uplink = make_uplink(loaded, store, remote)
        stack.callback(log.info, "agent_stopped", gateway=cfg.gateway.id)
        if not clock.synchronized():
            log.warning("clock_not_synchronized", boot=BOOT_ID,
                        detail="events are marked until NTP has set the clock (gateway.clock: ntp)")
        log.info("agent_started", gateway=cfg.gateway.id, devices=len(cfg.devices),
                 config=str(loaded.path), config_sha256=loaded.sha256[:12], store=str(store.path))
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        agent = Supervisor(loaded, store, uplink, clock, tasks, notifier, remote)
        stack.push_async_callback(agent.close)
        writer = tasks.create_task(store.writer(), name="store-writer")
        watchdog = tasks.create_task(notifier.watchdog(), name="watchdog")
        stack.push_async_callback(cancel_and_wait, [watchdog, writer])
        agent.start_uplink()
        stack.push_async_callback(agent.stop_uplink, 0.0)
        stack.push_async_callback(agent.drain_uplink, SHUTDOWN_DRAIN_S)
        stack.push_async_callback(store.flush)
        # Listening before any device reads its learned state, closed only after the
        # last save: `edge-agent relearn` relies on it (agent/service/relearn.py).
        await stack.enter_async_context(ControlServer(agent.control_socket, agent.control))
        stack.push_async_callback(_learned_state_saved)
        stack.callback(agent.open_windows_saved)  # after the flush, before the saves end
        for device in cfg.devices:
            agent.start_device(device)
        stack.push_async_callback(agent.stop_all_devices)
        agent.report_lost_windows()
        agent.started.set()
        helpers = [
            tasks.create_task(tick_detectors(agent.detectors, agent.share,
                                             agent.tick_period_s, clock), name="ticker"),
            tasks.create_task(agent.heartbeat(), name="heartbeat"),
            tasks.create_task(agent.keep_open_windows(), name="open-windows"),
        ]
        if remote is not None:
            helpers.append(tasks.create_task(remote.run(agent), name="remote"))
        stack.push_async_callback(cancel_and_wait, helpers)
        await agent.start_metrics()
        stack.push_async_callback(agent.stop_metrics)
        await stack.enter_async_context(StatusServer(agent.status_socket,
                                                     agent.status_document))
        started = time.monotonic()
        # Compiled ahead of time; else from NUMBA_CACHE_DIR, or compiled once; only the
        # detector kinds configured.
        await asyncio.to_thread(warm_up, {rule.kind for rule in cfg.detectors})
        log.info("kernels_ready", seconds=round(time.monotonic() - started, 3),
                 form=kernels_form(), why_not_aot=why_not_aot() or None)
        notifier.ready(agent.running_summary())
        while True:
            await _wait_any(stop, reload, agent.restarting)
            if stop.is_set() or agent.restarting.is_set():
                break
            reload.clear()
            log.info("config_reloading", config=str(agent.loaded.path))
            await agent.reload()
        log.info("agent_stopping", restart=agent.restarting.is_set())
        agent.stopping = True
        notifier.stopping()
    return agent.restarting.is_set()


async def _learned_state_saved() -> None:
    """The learned state on disk before relearn may rewrite it (agent/service/relearn.py)."""
    try:
        await asyncio.to_thread(wait_all_saved)
    except TimeoutError:
        log.warning("detector_state_save_slow", detail="still writing at shutdown")
