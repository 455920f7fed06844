"""Signed configurations and commands from the fleet side, received on the command topic.

A message is opened with the keys pinned on site (agent/config/signed.py) and must be newer
than the last of its type; else it is refused in a `config_rejected` event and changes
nothing (refusals counted, their events capped). A configuration goes to
agent/supervisor/config_apply.py; a command must be on the allow-list. `remote.json` in the
state directory keeps the versions, recorded before a message is acted on and acknowledged
(so it acts at most once), and an application under way (docs/remote-config.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.config.models import RemoteConfig
from agent.config.signed import KeyFileError, Refused, Signed, load_public_keys, open_signed
from agent.detect.state_file import write_atomically
from agent.events import COMMAND_ANSWER, CONFIG_REJECTED
from agent.service.relearn import COMMAND as RELEARN
from agent.supervisor.config_apply import Agent, ConfigApply, gateway_event

log = structlog.get_logger(__name__)

STATE_FILE = "remote.json"
"""In `gateway.state_dir`: versions seen, the last digests, an application under way."""
INBOX_SIZE = 64
"""Messages waiting to be handled; more (a flood at QoS 0) are dropped and counted."""
REJECTIONS_PER_MINUTE = 20
"""`config_rejected` events at most this often; every refusal is counted all the same."""


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
        self._gateway = gateway
        self._state_path = state_dir / STATE_FILE
        self._state = RemoteState.read(self._state_path)
        self._inbox: asyncio.Queue[tuple[bytes, Callable[[], None]]] = asyncio.Queue(INBOX_SIZE)
        self._configs = ConfigApply(remote, self._keep_pending)
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
        if self._state.pending is not None:
            await self._configs.resume(agent, self._state.pending)
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
                await self._configs.apply(agent, signed, ack)
            else:
                ack()
                await self._command(agent, signed)
        except Refused as refused:
            self._reject(agent, signed, refused)
        except OSError as exc:  # the state directory: full, read-only
            self._reject(agent, signed, Refused("apply_failed", f"cannot write "
                                                f"{exc.filename or self._state_path}: {exc}"))
        except Exception as exc:  # a bug: answered and logged; a message never stops the agent
            log.exception("remote_message_failed", type=signed.type if signed else None)
            self._reject(agent, signed, Refused("apply_failed", f"{type(exc).__name__}: {exc}"))

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

    async def _keep_pending(self, pending: dict[str, Any] | None) -> None:
        self._state.pending = pending
        await self._save()

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
        agent.share([gateway_event(CONFIG_REJECTED, {
            "type": signed.type if signed else None,
            "version": signed.version if signed else None,
            "key": signed.key_id if signed else None,
            "reason": refused.reason, "detail": refused.detail,
            "problems": refused.problems,
            "refused_total": self.refused_total, "unreported": self._unreported,
        })])
        self._unreported = 0

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
        agent.share([gateway_event(COMMAND_ANSWER, {
            "version": signed.version, "command": words, "ok": error is None,
            "answer": answer, "error": error,
        })])


