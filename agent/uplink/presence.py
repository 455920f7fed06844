"""The gateway's presence on its `status` topic: `online` when connected (birth), `offline`
when gone (will).

Retained, so whoever subscribes later learns at once whether the gateway is up and
which agent version and configuration it runs. Not an event: it has no `seq` and is
never stored, it only says what is true now. docs/events.md describes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgpack

PRESENCE_VERSION = 1
PRESENCE_KIND = "status"
"""The `kind` of the presence message on the wire: the last level of its topic (`{kind}`)."""

PresenceState = Literal["online", "offline"]


@dataclass(frozen=True, slots=True)
class Presence:
    gateway: str
    status: PresenceState
    agent_version: str
    config_sha256: str
    """Hash of the configuration file in use (empty when the caller did not give one)."""
    time_ns: int
    """UTC wall-clock ns: when the message was made (for a will: when the connection opened)."""
    version: int = PRESENCE_VERSION


class PresenceDecodeError(ValueError):
    """The bytes are not a presence message of a version this code understands."""


def encode_presence(status: Presence) -> bytes:
    return msgpack.packb(presence_fields(status), use_bin_type=True)


def presence_fields(status: Presence) -> dict[str, Any]:
    """The status message under its wire keys, as `tail --json` prints it too."""
    return {
        "v": status.version,
        "gw": status.gateway,
        "kind": PRESENCE_KIND,
        "status": status.status,
        "version": status.agent_version,
        "config_sha256": status.config_sha256,
        "t": status.time_ns,
    }


def decode_presence(payload: bytes | bytearray) -> Presence:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise PresenceDecodeError(f"not msgpack: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("kind") != PRESENCE_KIND:
        raise PresenceDecodeError("not a status message")
    if obj.get("v") != PRESENCE_VERSION:
        raise PresenceDecodeError(f"unsupported status version {obj.get('v')!r}")
    status = obj.get("status")
    if status not in ("online", "offline"):
        raise PresenceDecodeError(f"unknown status {status!r}")
    try:
        return Presence(
            gateway=str(obj["gw"]),
            status=status,
            agent_version=str(obj["version"]),
            config_sha256=str(obj["config_sha256"]),
            time_ns=int(obj["t"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PresenceDecodeError(f"missing or malformed field: {exc}") from exc
