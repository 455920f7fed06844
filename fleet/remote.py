"""What goes to a gateway: signed configurations and commands, checked here before they go.

`edge-fleet keys new` makes the signing key pair (the public half goes on the gateways,
`remote.trusted_keys`). A configuration is checked with the agent's own loader before it is
signed, so that a file the gateway would refuse as invalid, or one for another gateway,
never leaves: the operator reads the same `file:line` problems `edge-agent check` prints.
Messages are signed by `agent.config.signed` (docs/remote-config.md); their bodies are built
here: a configuration's version is a small number that grows per gateway, a command's is its
issue time in nanoseconds (it grows per signer without any bookkeeping).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.loader import ConfigError, load_config
from agent.config.signed import load_public_keys, new_key_pair

DEFAULT_EXPIRY_S = 7 * 86400.0
"""How long a message may wait at the broker for its gateway (a gateway offline for a week
still gets it; an older one is refused as `expired`)."""

COMMANDS: dict[tuple[str, ...], str] = {
    ("relearn",): "relearn DEVICE [RULE...]: forget what the device's rules learned",
    ("reload",): "reload: read the configuration file again",
    ("status",): "status: the agent's status",
    ("buffer", "stats"): "buffer stats: the store's figures",
}
"""The commands an agent answers (its words and what they do); anything else it refuses as
`unknown_command`, so it is refused here first."""

_NO_DEFAULT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""`${NAME}` without a `:-default`: a value of the gateway's environment."""


class Refusal(Exception):
    """Refused here, before anything was signed or sent; `lines` say why, one per problem."""

    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


def write_key_pair(out: Path) -> str:
    """The private key in `out` (PEM, mode 0600) and the public one in `out.pub`; the key id.

    Refuses (`Refusal`) when either file exists: a signing key overwritten is a fleet whose
    gateways no longer trust its messages."""
    public_path = out.with_name(out.name + ".pub")
    existing = [str(p) for p in (out, public_path) if p.exists() or p.is_symlink()]
    if existing:
        raise Refusal(*(f"{p}: exists already; a key is never overwritten (give another "
                        "--out, or move the old one away first)" for p in existing))
    private, public = new_key_pair()
    _write_new(out, private, 0o600)
    try:
        _write_new(public_path, public, 0o644)
    except BaseException:
        out.unlink()
        raise
    return next(iter(load_public_keys([public_path])))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Created with `mode` from the start (never readable by others, not even briefly), and
    only if absent (`O_EXCL`: no race with another writer, no symlink followed)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError as exc:
        raise Refusal(f"{path}: exists already; a key is never overwritten") from exc
    except OSError as exc:
        raise Refusal(f"{path}: cannot create it: {exc.strerror}") from exc
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits off the public key's mode
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class CheckedConfig:
    """A configuration file the agent's loader accepted, for the gateway it names."""

    text: str
    """The file as written (`${NAME}`s unresolved: the gateway resolves them)."""
    sha256: str
    """Of the file's bytes: what the agent reports once it applied it (and in heartbeats)."""
    site: str
    topic: str
    """Its `remote.topic`: where the gateway listens (a pushed file repeats the section)."""


def check_config(path: Path, gateway: str) -> CheckedConfig:
    """`path` validated as the agent validates it, for `gateway`; `Refusal` with every problem.

    `${NAME}` values come from the gateway's environment, not this one's: each is checked as
    a placeholder text. The file's `remote` section must keep remote configuration on (the
    agent refuses any change to it, and a file that turned it off would be refused too)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise Refusal(f"{path}: cannot read it: {exc.strerror}") from exc
    placeholders = {name: f"set-on-the-gateway-{name}"
                    for name in _NO_DEFAULT.findall(raw.decode("utf-8", "replace"))}
    try:
        loaded = load_config(path, environ=placeholders, local_files=False)
    except ConfigError as exc:
        raise Refusal(*exc.lines, f"{path}: not pushed: the gateway would refuse it "
                      "(invalid_config)") from exc
    if loaded.sha256 != hashlib.sha256(raw).hexdigest():
        raise Refusal(f"{path}: changed while it was read; push it again")
    config = loaded.config
    problems = []
    if config.gateway.id != gateway:
        problems.append(f"{path}: gateway.id is {config.gateway.id!r}, not {gateway!r}: this "
                        "file is another gateway's (it would refuse it as wrong_gateway)")
    if not config.remote.enabled:
        problems.append(f"{path}: remote.enabled is false: the gateway refuses a file that "
                        "changes its remote section (and could not be reached again)")
    if problems:
        raise Refusal(*problems)
    return CheckedConfig(raw.decode("utf-8"), loaded.sha256, config.gateway.site,
                         config.remote.topic)


def choose_version(largest_known: int | None, requested: int | None) -> int:
    """A configuration's version: `requested` when given (`--version`: a gateway whose state
    was reset may need a lower one), else one above the largest known for the gateway."""
    if requested is None:
        return (largest_known or 0) + 1
    if requested < 1:
        raise Refusal(f"--version {requested}: a version is a positive integer")
    return requested


def check_command(words: Sequence[str]) -> tuple[str, ...]:
    """The command's words, when the agent knows the command; else `Refusal` listing them."""
    command = tuple(words)
    known = next((c for c in COMMANDS if command[:len(c)] == c), None)
    if known == ("relearn",) and len(command) < 2:
        raise Refusal("relearn: name the device (relearn DEVICE [RULE...])")
    if known is None or (known != ("relearn",) and len(command) != len(known)):
        raise Refusal(f"{' '.join(command)!r}: not a command the agent answers; one of:",
                      *(f"  {text}" for text in COMMANDS.values()))
    return command


def config_body(gateway: str, version: int, text: str, expires_in_s: float,
                now_ns: int | None = None) -> dict[str, Any]:
    issued = time.time_ns() if now_ns is None else now_ns
    return {"type": "config", "gateway": gateway, "version": version, "issued_ns": issued,
            "expires_ns": issued + round(expires_in_s * 1e9), "config": text}


def command_body(gateway: str, command: Sequence[str], expires_in_s: float,
                 now_ns: int | None = None) -> dict[str, Any]:
    """Its version is its issue time: it grows with every command of this signer."""
    issued = time.time_ns() if now_ns is None else now_ns
    return {"type": "command", "gateway": gateway, "version": issued, "issued_ns": issued,
            "expires_ns": issued + round(expires_in_s * 1e9), "command": list(command)}


def command_topic(pattern: str, gateway: str, site: str | None) -> str:
    """The gateway's command topic; `site` may be None only when `pattern` does not use it."""
    if site is None and "{site}" in pattern:
        raise Refusal(f"no site known for {gateway} (nothing received from it yet): give "
                      "--site")
    return pattern.format(site=site or "", gateway=gateway)
