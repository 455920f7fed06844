"""Signed configurations and commands from the fleet side, received on the command topic.

A message is opened with the keys pinned on site (agent/config/signed.py) and must be newer
than the last of its type; else it is refused in a `config_rejected` event and changes
nothing. A configuration is checked as `edge-agent check` checks it, may not change `remote`
(nor, unless `remote.allow_restart`, what applies only at start), replaces the running file
(the old one kept as `<file>.previous`), is applied by the reload path and then confirmed:
devices that were up are up again, and a changed uplink connected, within `confirm_s`, or the
previous file runs again (`config_rolled_back`). Commands are an allow-list. `remote.json`
in the state directory keeps the versions and an application under way (docs/remote-config.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.config import ConfigError, LoadedConfig, load_config
from agent.config.models import RemoteConfig
from agent.config.signed import KeyFileError, Refused, Signed, load_public_keys, open_signed
from agent.detect.state_file import sync_directory, write_atomically
from agent.events import (
    COMMAND_ANSWER,
    CONFIG_APPLIED,
    CONFIG_REJECTED,
    CONFIG_ROLLED_BACK,
    GATEWAY_DEVICE,
    Event,
)
from agent.service.relearn import COMMAND as RELEARN
from agent.store import EventStore
from agent.supervisor.reload import ReloadPlan, plan_reload

log = structlog.get_logger(__name__)

STATE_FILE = "remote.json"
"""In `gateway.state_dir`: versions seen, recent message digests, an application under way."""
INBOX_SIZE = 64
"""Messages waiting to be handled; more (a flood at QoS 0) are dropped and counted."""
CONFIRM_POLL_S = 0.2
REJECTIONS_PER_MINUTE = 10
"""`config_rejected` events at most this often; every refusal is counted all the same."""
RESTART_SECTIONS = ("gateway", "store", "log")


class Agent(Protocol):
    """What the remote control needs of the running agent (agent/supervisor/runtime.py)."""

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


@dataclass
class RemoteState:
    """What `remote.json` holds."""

    config_version: int = 0
    command_version: int = 0
    last_digest: dict[str, str] = field(default_factory=dict)
    """By type, the digest of the last message accepted: delivered again (a reconnect before
    our PUBACK), it is ignored; any other message not newer is a replay, refused."""
    pending: dict[str, Any] | None = None
    """A configuration being applied: version, sha256, previous_sha256, key, up_before."""

    @classmethod
    def read(cls, path: Path) -> RemoteState:
        try:
            data = json.loads(path.read_bytes())
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)
                          if f.name in data})
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, TypeError) as exc:
            # Versions forgotten would let an old message in again: say so loudly.
            log.error("remote_state_unreadable", path=str(path), error=str(exc),
                      detail="versions seen are lost; older signed messages may apply again")
            return cls()


class RemoteControl:
    """Receives messages from the uplink (`submit`), handles them one at a time (`run`)."""

    def __init__(self, remote: RemoteConfig, gateway: str, state_dir: Path) -> None:
        self._remote = remote
        self._gateway = gateway
        self._state_path = state_dir / STATE_FILE
        self._state = RemoteState.read(self._state_path)
        self._inbox: asyncio.Queue[tuple[bytes, Callable[[], None]]] = asyncio.Queue(INBOX_SIZE)
        self.refused_total = 0
        self._unreported = 0
        self._reported_mono: list[float] = []
        try:
            self._keys = load_public_keys(remote.trusted_keys)
        except KeyFileError as exc:  # `check` refuses it; a file gone since is logged
            log.error("remote_keys_unusable", problem=str(exc),
                      detail="every signed message is refused until the key files are fixed")
            self._keys = {}

    @property
    def config_version(self) -> int:
        return self._state.config_version

    def submit(self, payload: bytes, ack: Callable[[], None]) -> None:
        """From the uplink, on the event loop: queued, acknowledged once handled."""
        try:
            self._inbox.put_nowait((payload, ack))
        except asyncio.QueueFull:
            self.refused_total += 1
            self._unreported += 1  # not acknowledged: a QoS 1 message comes again

    async def run(self, agent: Agent) -> None:
        """Finish an application a stop interrupted, then handle messages until cancelled."""
        await self._resume(agent)
        while True:
            payload, ack = await self._inbox.get()
            try:
                await self._handle(agent, payload, ack)
            finally:
                ack()

    # --- one message ------------------------------------------------------------------

    async def _handle(self, agent: Agent, payload: bytes, ack: Callable[[], None]) -> None:
        signed: Signed | None = None
        try:
            signed = open_signed(payload, self._keys, self._gateway, time.time_ns())
            if self._state.last_digest.get(signed.type) == signed.digest:
                log.info("remote_message_again", type=signed.type, version=signed.version)
                return  # handled already
            self._take_version(signed)
            await self._save()
            if signed.type == "config":
                await self._apply(agent, signed, ack)
            else:
                ack()
                await self._command(agent, signed)
        except Refused as refused:
            self._reject(agent, signed, refused)

    def _take_version(self, signed: Signed) -> None:
        """The version must grow: an older message (a replay) changes nothing."""
        last = (self._state.config_version if signed.type == "config"
                else self._state.command_version)
        if signed.version <= last:
            raise Refused("replayed", f"{signed.type} version {signed.version} is not newer "
                          f"than {last}, the last one accepted")
        if signed.type == "config":
            self._state.config_version = signed.version
        else:
            self._state.command_version = signed.version
        self._state.last_digest[signed.type] = signed.digest

    async def _save(self) -> None:
        text = json.dumps(dataclasses.asdict(self._state), separators=(",", ":")).encode()
        await asyncio.to_thread(write_atomically, self._state_path, text)

    def _reject(self, agent: Agent, signed: Signed | None, refused: Refused) -> None:
        self.refused_total += 1
        log.warning("remote_message_refused", reason=refused.reason, detail=refused.detail,
                    type=signed.type if signed else None,
                    version=signed.version if signed else None)
        now = time.monotonic()
        self._reported_mono = [t for t in self._reported_mono if now - t < 60]
        if len(self._reported_mono) >= REJECTIONS_PER_MINUTE:
            self._unreported += 1  # a flood: counted, and said in the next event
            return
        self._reported_mono.append(now)
        agent.share([_event(CONFIG_REJECTED, {
            "type": signed.type if signed else None,
            "version": signed.version if signed else None,
            "key": signed.key_id if signed else None,
            "reason": refused.reason, "detail": refused.detail,
            "problems": refused.problems,
            "refused_total": self.refused_total, "unreported": self._unreported,
        })])
        self._unreported = 0

    # --- configurations ---------------------------------------------------------------

    async def _apply(self, agent: Agent, signed: Signed, ack: Callable[[], None]) -> None:
        assert signed.config is not None
        path = agent.loaded.path
        text = signed.config.encode()
        incoming = path.with_name(path.name + ".incoming")
        await asyncio.to_thread(write_atomically, incoming, text)
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
        self._state.pending = {
            "version": signed.version, "sha256": hashlib.sha256(text).hexdigest(),
            "previous_sha256": previous_sha256, "key": signed.key_id, "up_before": up_before,
            "restart": restart,
        }
        await self._save()
        ack()  # decided and on disk: a delivery again would be a replay
        await asyncio.to_thread(_swap_in, path, incoming)
        log.info("remote_config_written", version=signed.version, path=str(path),
                 restart=restart)
        if restart:
            agent.restart()  # confirmed by the next start (`_resume`)
            return
        await self._reload_and_confirm(agent, self._state.pending)

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
        self._state.pending = None
        await self._save()
        log.info("remote_config_applied", version=pending["version"], **changes)
        agent.share([_event(CONFIG_APPLIED, {
            "version": pending["version"], "sha256": pending["sha256"],
            "previous_sha256": pending["previous_sha256"], "key": pending["key"], **changes,
        })])

    async def _roll_back(self, agent: Agent, pending: dict[str, Any], reason: str,
                         down: list[str]) -> None:
        path = agent.loaded.path
        restored = await asyncio.to_thread(_restore_previous, path)
        if restored and agent.loaded.sha256 != pending["previous_sha256"]:
            await agent.reload()
        self._state.pending = None
        await self._save()
        log.error("remote_config_rolled_back", version=pending["version"], reason=reason,
                  devices_down=down, restored=restored)
        agent.share([_event(CONFIG_ROLLED_BACK, {
            "version": pending["version"], "sha256": pending["sha256"],
            "restored_sha256": pending["previous_sha256"] if restored else None,
            "reason": reason, "devices_down": down,
        })])

    async def _resume(self, agent: Agent) -> None:
        """At start: an application a stop (or a kill) interrupted is confirmed or undone."""
        pending = self._state.pending
        if pending is None:
            return
        if agent.loaded.sha256 == pending["sha256"]:
            log.info("remote_config_resumed", version=pending["version"])
            await self._confirm(agent, pending, False, {"restarted": True})
        else:  # stopped before the new file was in place: the previous one runs
            self._state.pending = None
            await self._save()
            agent.share([_event(CONFIG_ROLLED_BACK, {
                "version": pending["version"], "sha256": pending["sha256"],
                "restored_sha256": agent.loaded.sha256, "devices_down": [],
                "reason": "the agent stopped before the new file was in place",
            })])

    # --- commands ---------------------------------------------------------------------

    async def _command(self, agent: Agent, signed: Signed) -> None:
        words = list(signed.command)
        log.info("remote_command", command=words, version=signed.version, key=signed.key_id)
        answer: dict[str, Any] | None = None
        error: str | None = None
        match words:
            case ["relearn", device, *rules]:
                reply = await agent.control({"command": RELEARN, "device": device,
                                             "rules": rules})
                answer, error = (reply, None) if reply.get("ok") else (None, reply.get("error"))
            case ["reload"]:
                plan, problems = await agent.reload()
                if plan is None:
                    error = "; ".join(problems)
                else:
                    answer = {"kept": plan.keep, "started": plan.start, "stopped": plan.stop,
                              "refused": plan.refused}
            case ["status"]:
                answer = await agent.status_shared()
            case ["buffer", "stats"]:
                answer = dataclasses.asdict(await agent.store.stats())
            case _:
                raise Refused("unknown_command", f"{' '.join(words)[:80]!r} is not one of: "
                              "relearn DEVICE [RULE...], reload, status, buffer stats")
        agent.share([_event(COMMAND_ANSWER, {
            "version": signed.version, "command": words, "ok": error is None,
            "answer": answer, "error": error,
        })])


def _event(kind: str, data: dict[str, Any]) -> Event:
    return Event(kind, GATEWAY_DEVICE, time.time_ns(), data)


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
