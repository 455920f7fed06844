"""Applying a signed configuration: checked, swapped in beside the old file, applied by the
reload path, then confirmed or rolled back (docs/remote-config.md).

Confirmed: within `remote.confirm_s` every device that was up before is up again, and a
changed uplink connected; else the previous file (kept as `<file>.previous`) runs again.
A change of what applies only at start takes a restart, allowed by `remote.allow_restart`;
the next start confirms it. What is under way is kept on disk by the caller (`keep`), so a
kill at any point is finished by the next start (`resume`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.config import ConfigError, LoadedConfig, load_config
from agent.config.models import RemoteConfig
from agent.config.signed import Refused, Signed
from agent.detect.state_file import sync_directory, write_atomically
from agent.events import CONFIG_APPLIED, CONFIG_ROLLED_BACK, GATEWAY_DEVICE, Event
from agent.store import EventStore
from agent.supervisor.reload import ReloadPlan, plan_reload

log = structlog.get_logger(__name__)

CONFIRM_POLL_S = 0.2


class Agent(Protocol):
    """What remote configuration needs of the running agent (agent/supervisor/runtime.py)."""

    loaded: LoadedConfig
    store: EventStore

    def share(self, events: Iterable[Event]) -> None: ...
    async def reload(self) -> tuple[ReloadPlan | None, list[str]]: ...
    def device_statuses(self) -> dict[str, tuple[str, str]]: ...
    @property
    def uplink_connected(self) -> bool: ...
    async def control(self, request: dict[str, Any]) -> dict[str, Any]: ...
    async def status_shared(self) -> dict[str, Any]: ...
    def restart(self) -> None: ...


def gateway_event(kind: str, data: dict[str, Any]) -> Event:
    """An event about the gateway itself, made now."""
    return Event(kind, GATEWAY_DEVICE, time.time_ns(), data)


class ConfigApply:
    """Applies configurations one at a time; `keep` saves (or clears) the one under way."""

    def __init__(self, remote: RemoteConfig,
                 keep: Callable[[dict[str, Any] | None], Awaitable[None]]) -> None:
        self._remote = remote
        self._keep = keep

    async def apply(self, agent: Agent, signed: Signed, ack: Callable[[], None]) -> None:
        """Check, swap in, reload, confirm; `Refused` before anything changed. `ack` is
        called once the decision is on disk."""
        assert signed.config is not None
        path = agent.loaded.path
        text = signed.config.encode()
        incoming = path.with_name(path.name + ".incoming")
        try:
            await asyncio.to_thread(write_atomically, incoming, text)
        except OSError as exc:
            raise Refused("apply_failed", f"cannot write beside {path} ({exc}): its folder "
                          "must be writable by the agent (docs/remote-config.md)") from None
        try:
            loaded = await asyncio.to_thread(load_config, incoming)
            restart = self._restart_needed(agent.loaded, loaded)
        except ConfigError as exc:
            await asyncio.to_thread(incoming.unlink, missing_ok=True)
            raise Refused("invalid_config", f"version {signed.version} fails the check "
                          f"edge-agent check makes ({len(exc.lines)} problems)",
                          [line.replace(str(incoming), f"version {signed.version}")
                           for line in exc.lines]) from None
        except Refused:
            await asyncio.to_thread(incoming.unlink, missing_ok=True)
            raise
        previous_sha256 = agent.loaded.sha256
        up_before = sorted(name for name, (status, _) in agent.device_statuses().items()
                           if status == "up")
        pending = {
            "version": signed.version, "sha256": hashlib.sha256(text).hexdigest(),
            "previous_sha256": previous_sha256, "key": signed.key_id, "up_before": up_before,
            "restart": restart,
        }
        await self._keep(pending)
        ack()  # decided and on disk: a delivery again would be a replay
        try:
            await asyncio.to_thread(_swap_in, path, incoming)
        except OSError as exc:  # the running file is still the old one
            await self._keep(None)
            raise Refused("apply_failed", f"cannot replace {path} ({exc})") from None
        log.info("remote_config_written", version=signed.version, path=str(path),
                 restart=restart)
        if restart:
            agent.restart()  # confirmed by the next start (`resume`)
            return
        await self._reload_and_confirm(agent, pending)

    def _restart_needed(self, running: LoadedConfig, new: LoadedConfig) -> bool:
        """Whether applying `new` takes a restart; `Refused` for what may not change remotely."""
        if new.config.remote != running.config.remote:
            raise Refused("forbidden_change", "the remote section (enabling, trusted keys) "
                          "changes only on site, never remotely")
        plan = plan_reload(running.config, new.config)
        if not plan.refused:
            return False
        if not self._remote.allow_restart:
            raise Refused("forbidden_change", "; ".join(plan.refused) + " (a restart the "
                          "agent may not make itself: remote.allow_restart is off)")
        return True

    async def _reload_and_confirm(self, agent: Agent, pending: dict[str, Any]) -> None:
        plan, problems = await agent.reload()
        if plan is None:
            await self._roll_back(agent, pending, "; ".join(problems) or "the reload failed",
                                  [])
            return
        await self._confirm(agent, pending, plan.mqtt_changed, {
            "kept": plan.keep, "started": plan.start, "stopped": plan.stop,
            "mqtt_restarted": plan.mqtt_changed,
        })

    async def _confirm(self, agent: Agent, pending: dict[str, Any], uplink_changed: bool,
                       changes: dict[str, Any]) -> None:
        deadline = time.monotonic() + self._remote.confirm_s
        while True:
            statuses = agent.device_statuses()
            down = [n for n in pending["up_before"] if n in statuses and statuses[n][0] != "up"]
            uplink_down = uplink_changed and not agent.uplink_connected
            if not down and not uplink_down:
                break
            if time.monotonic() >= deadline:
                reason = (f"devices {', '.join(down)} not up" if down else "the uplink not "
                          "connected") + f" within remote.confirm_s ({self._remote.confirm_s:g} s)"
                await self._roll_back(agent, pending, reason, down)
                return
            # Device health changes have no event to wait on; bounded by confirm_s.
            await asyncio.sleep(CONFIRM_POLL_S)
        await self._keep(None)
        log.info("remote_config_applied", version=pending["version"], **changes)
        agent.share([gateway_event(CONFIG_APPLIED, {
            "version": pending["version"], "sha256": pending["sha256"],
            "previous_sha256": pending["previous_sha256"], "key": pending["key"], **changes,
        })])

    async def _roll_back(self, agent: Agent, pending: dict[str, Any], reason: str,
                         down: list[str]) -> None:
        path = agent.loaded.path
        restored = await asyncio.to_thread(_restore_previous, path)
        await self._keep(None)
        if restored and pending.get("restart"):
            agent.restart()  # what the file changed applies only at start
        elif restored and agent.loaded.sha256 != pending["previous_sha256"]:
            await agent.reload()
        log.error("remote_config_rolled_back", version=pending["version"], reason=reason,
                  devices_down=down, restored=restored)
        agent.share([gateway_event(CONFIG_ROLLED_BACK, {
            "version": pending["version"], "sha256": pending["sha256"],
            "restored_sha256": pending["previous_sha256"] if restored else None,
            "reason": reason, "devices_down": down,
        })])

    async def resume(self, agent: Agent, pending: dict[str, Any]) -> None:
        """At start: an application a stop (or a kill) interrupted is confirmed or undone."""
        if agent.loaded.sha256 == pending["sha256"]:
            log.info("remote_config_resumed", version=pending["version"])
            await self._confirm(agent, pending, False, {"restarted": True})
        else:  # stopped before the new file was in place: the previous one runs
            await self._keep(None)
            agent.share([gateway_event(CONFIG_ROLLED_BACK, {
                "version": pending["version"], "sha256": pending["sha256"],
                "restored_sha256": agent.loaded.sha256, "devices_down": [],
                "reason": "the agent stopped before the new file was in place",
            })])


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def _swap_in(path: Path, incoming: Path) -> None:
    """The running file kept as `.previous`, then `incoming` in its place: each step atomic,
    so a kill between them leaves the old file or the new one, never half of one."""
    write_atomically(_previous(path), path.read_bytes(), path.stat())
    os.replace(incoming, path)
    sync_directory(path.parent)


def _restore_previous(path: Path) -> bool:
    """The kept file back in place; False when there is none (nothing was replaced)."""
    previous = _previous(path)
    try:
        write_atomically(path, previous.read_bytes(), path.stat())
    except FileNotFoundError:
        return False
    return True
