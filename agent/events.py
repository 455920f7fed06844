"""Events: what the agent sends, and their msgpack encoding (schema version 1).

An event is what a detector or the supervisor says about a device; the store
gives it its gateway-wide sequence number when it is made durable, and encodes
it then, so that the bytes on disk are exactly the bytes that are sent.
docs/events.md describes every kind and field; keep the two together.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgpack

SCHEMA_VERSION = 1

# Event kinds. The kind is also the last part of the default MQTT topic.
WINDOW = "window"
"""Per-tag aggregates of one device over one window."""
SAMPLES = "samples"
"""Every sample of the tags shared `raw`, one event per device and window."""
CHANGE = "change"
"""Tags marked `report_on_change` (and text values) that moved: reported as it happens."""
DEVICE_HEALTH = "device_health"
"""A device's connection or read status changed."""
QUALITY = "quality"
"""The quality class (good, uncertain, bad) of some of a device's tags changed."""
CLOCK = "clock"
"""The gateway's clock became synchronized: the boot's monotonic-to-UTC mapping."""

STATE = "state"
"""A machine's state changed (off, idle, running, overload)."""
ENERGY = "energy"
"""A machine's energy and usage over a report interval or a shift."""

STORE_HEALTH = "store_health"
"""The store dropped or compacted events, or its depth changed notably."""
WINDOWS_LOST = "windows_lost"
"""At a start: the device windows the last run left open and could not close (a power cut)."""

HEARTBEAT = "heartbeat"
"""The gateway's own vital signs: periodic (`health.heartbeat_s`) and on each change."""

ANOMALY = "anomaly"
"""A detector's anomaly episode: one event when it is recognised, one when it has ended."""
LIMIT = "limit"
"""A limit violation (level or rate of change): start, then end with how long and how far."""

CONFIG_APPLIED = "config_applied"
"""A signed configuration from the fleet side was applied (docs/remote-config.md)."""
CONFIG_REJECTED = "config_rejected"
"""A message on the command topic was refused, and why: it changed nothing."""
CONFIG_ROLLED_BACK = "config_rolled_back"
"""An applied configuration failed its confirmation: the previous file runs again."""
COMMAND_ANSWER = "command_answer"
"""The answer to a signed command (`relearn`, `reload`, `status`, `buffer stats`)."""

GATEWAY_DEVICE = "_gateway"
"""The `device` of events about the gateway itself (topic-safe, never a device name)."""

_PRIORITY = {SAMPLES: -1, WINDOW: 0, CHANGE: 1, DEVICE_HEALTH: 1, STORE_HEALTH: 1,
             WINDOWS_LOST: 1, HEARTBEAT: 1, COMMAND_ANSWER: 1,
             ENERGY: 1, QUALITY: 1, CLOCK: 2, STATE: 2, ANOMALY: 2, LIMIT: 2}
"""What a full store gives up first: raw samples (-1: bulky, and their windows hold their
statistics), then periodic aggregates (0: merged into coarser ones before any is dropped),
then health, changes and energy reports (1: each report also carries the lifetime totals, so
a lost one loses only its breakdown), then the rest (2: anomalies, limit violations, state
changes), kept longest."""


def priority_of(kind: str) -> int:
    return _PRIORITY.get(kind, 2)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    device: str
    time_ns: int
    """UTC wall-clock nanoseconds: when what the event reports happened (or ended)."""
    data: Mapping[str, Any]
    """Kind-specific fields: msgpack-native types only (str, int, float, bool, None, lists, maps).
    Fields named `*_ns` hold UTC timestamps (durations are in `*_s`)."""
    mono_ns: int | None = None
    """Set when the wall clock was not synchronized as the event was made: the monotonic
    time of `time_ns`, from which the time is corrected once the clock is right."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded event as the cloud sees it; on the wire and in every printed form its fields
    go by their short keys (`wire_fields`: `v`, `gw`, `dev`, `t`, `hist`, `mono`)."""

    version: int
    gateway: str
    seq: int
    id: str
    """Unique per event: `<store>-<seq>` (the store's 16 hex digits, `seq` in decimal) for an
    event of a store, else a UUID4 (32 hex digits); duplicates from resends share it."""
    kind: str
    device: str
    time_ns: int
    data: dict[str, Any]
    historical: bool = False
    """Replayed from the backlog after an outage, behind live events."""
    clock: str = "synced"
    """`unsynced`: made before the gateway's clock was synchronized, `t` may be wrong;
    `corrected`: such an event whose times were corrected before sending."""
    mono_ns: int | None = None
    boot: str | None = None
    """With an unsynced or corrected clock: the monotonic time of `t` and the boot it
    belongs to, so that a consumer can correct it with the boot's `clock` event."""


def encode(event: Event, *, gateway: str, seq: int, boot: str = "", store: str = "") -> bytes:
    """The wire form: a msgpack map with short keys (every byte counts on a metered link);
    `store`: the identity of the store numbering it, which its `id` then names."""
    unsynced = event.mono_ns is not None
    return encode_envelope(
        Envelope(
            version=SCHEMA_VERSION,
            gateway=gateway,
            seq=seq,
            id=f"{store}-{seq}" if store else uuid.uuid4().hex,
            kind=event.kind,
            device=event.device,
            time_ns=event.time_ns,
            data=dict(event.data),
            clock="unsynced" if unsynced else "synced",
            mono_ns=event.mono_ns,
            boot=boot if unsynced else None,
        )
    )


def encode_envelope(env: Envelope) -> bytes:
    return msgpack.packb(wire_fields(env), use_bin_type=True)


def wire_fields(env: Envelope) -> dict[str, Any]:
    """The event under its wire keys (docs/events.md): the one vocabulary of every form an
    event is shown in, the msgpack payload, `tail --json` and `buffer export` alike."""
    obj: dict[str, Any] = {
        "v": env.version,
        "gw": env.gateway,
        "seq": env.seq,
        "id": env.id,
        "kind": env.kind,
        "dev": env.device,
        "t": env.time_ns,
        "data": env.data,
    }
    if env.historical:
        obj["hist"] = True
    if env.clock != "synced":
        obj.update(clock=env.clock, mono=env.mono_ns, boot=env.boot)
    return obj


def correct_clock(payload: bytes, corrected_time_ns: int) -> bytes:
    """The event with `t` set to its true time and every `*_ns` field of its data shifted alike."""
    return encode_envelope(corrected(decode(payload), corrected_time_ns))


def corrected(env: Envelope, corrected_time_ns: int) -> Envelope:
    """`correct_clock` on a decoded event."""
    shift = corrected_time_ns - env.time_ns
    data = {k: v + shift if k.endswith("_ns") and isinstance(v, int) else v
            for k, v in env.data.items()}
    return replace(env, time_ns=corrected_time_ns, data=data, clock="corrected")


_FIXMAP, _FIXMAP_MAX = 0x80, 0x8F
_HIST_ENTRY = msgpack.packb("hist") + msgpack.packb(True)


def mark_historical(payload: bytes) -> bytes:
    """The same event, flagged as replayed backlog (done when it is sent, not when stored).

    Without decoding: an event is a msgpack map of fewer than 15 keys (a fixmap, whose
    first byte holds the count), so the flag is one more entry appended; a map's order means
    nothing. Anything else (already flagged, or not such a map) takes the slow way."""
    head = payload[0] if payload else 0
    if _FIXMAP <= head < _FIXMAP_MAX and not payload.endswith(_HIST_ENTRY):
        return bytes((head + 1,)) + payload[1:] + _HIST_ENTRY
    return encode_envelope(replace(decode(payload), historical=True))


class DecodeError(ValueError):
    """The bytes are not an event of a schema version this code understands."""


def store_of(event_id: str) -> str:
    """The store an event id names (`<store>-<seq>`), or "" for a UUID4 id."""
    store, dash, _ = event_id.partition("-")
    return store if dash else ""


def decode(payload: bytes | bytearray) -> Envelope:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise DecodeError(f"not msgpack: {exc}") from exc
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a map, got {type(obj).__name__}")
    version = obj.get("v")
    if version != SCHEMA_VERSION:
        raise DecodeError(f"unsupported schema version {version!r}")
    try:
        return Envelope(
            version=version,
            gateway=str(obj["gw"]),
            seq=int(obj["seq"]),
            id=str(obj["id"]),
            kind=str(obj["kind"]),
            device=str(obj["dev"]),
            time_ns=int(obj["t"]),
            data=dict(obj["data"]),
            historical=bool(obj.get("hist", False)),
            clock=str(obj.get("clock", "synced")),
            mono_ns=obj.get("mono"),
            boot=obj.get("boot"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"missing or malformed field: {exc}") from exc
