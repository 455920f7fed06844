"""The gateway's status message: `online` when connected (birth), `offline` when gone (will).

Retained, so whoever subscribes later learns at once whether the gateway is up and
which agent version and configuration it runs. Not an event: it has no `seq` and is
never stored, it only says what is true now. docs/events.md describes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgpack

STATUS_VERSION = 1
STATUS_KIND = "status"
"""The `kind` of the status message: the last level of its topic (`{kind}`)."""

Status = Literal["online", "offline"]


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    gateway: str
    status: Status
    agent_version: str
    config_sha256: str
    """Hash of the configuration file in use (empty when the caller did not give one)."""
    time_ns: int
    """UTC wall-clock ns: when the message was made (for a will: when the connection opened)."""
    version: int = STATUS_VERSION


class StatusDecodeError(ValueError):
    """The bytes are not a status message of a version this code understands."""


def encode_status(status: GatewayStatus) -> bytes:
    obj: dict[str, Any] = {
        "v": status.version,
        "gw": status.gateway,
        "kind": STATUS_KIND,
        "status": status.status,
        "version": status.agent_version,
        "config_sha256": status.config_sha256,
        "t": status.time_ns,
    }
    return msgpack.packb(obj, use_bin_type=True)


def decode_status(payload: bytes | bytearray) -> GatewayStatus:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise StatusDecodeError(f"not msgpack: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("kind") != STATUS_KIND:
        raise StatusDecodeError("not a status message")
    if obj.get("v") != STATUS_VERSION:
        raise StatusDecodeError(f"unsupported status version {obj.get('v')!r}")
    status = obj.get("status")
    if status not in ("online", "offline"):
        raise StatusDecodeError(f"unknown status {status!r}")
    try:
        return GatewayStatus(
            gateway=str(obj["gw"]),
            status=status,
            agent_version=str(obj["version"]),
            config_sha256=str(obj["config_sha256"]),
            time_ns=int(obj["t"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StatusDecodeError(f"missing or malformed field: {exc}") from exc
