"""The Edge Node's side of a Sparkplug session, without I/O: births, aliases, `seq`, deaths, and
each stored event as the messages that carry it.

`seq` counts 0-255 over NBIRTH, DBIRTH, NDATA, DDATA and DDEATH of one session (NBIRTH is 0);
NDEATH has none. An alias names one metric of the node for as long as the agent runs; a metric
not in the last birth makes one before the data that uses it. Devices are born with the node
and die (DDEATH) with a live `device_health` down; births carry each metric's last live value.
A dead device's other events wait (in the store) for its next DBIRTH.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import structlog

from agent.events import DEVICE_HEALTH, GATEWAY_DEVICE, Envelope
from agent.uplink.sparkplug import codec, topics
from agent.uplink.sparkplug.codec import DataType, Metric, Payload, Value
from agent.uplink.sparkplug.mapping import Reading, Spec
from agent.uplink.sparkplug.mapping import readings as event_readings

log = structlog.get_logger(__name__)

BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"


class Outgoing(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    carries_event: bool
    """Its PUBACK acknowledges the stored event to the store (QoS 1)."""
    message_type: str
    device: str | None
    """The device a DBIRTH, DDATA or DDEATH is about (None: the node)."""


class _Known(NamedTuple):
    alias: int
    spec: Spec


class EdgeNode:
    def __init__(self, group: str, node: str, devices: Mapping[str, Sequence[Spec]],
                 node_metrics: Sequence[Spec]) -> None:
        self.group = group
        self.node = node
        self._metrics: dict[str | None, dict[str, _Known]] = {}
        """Per device (None: the node itself), name -> alias and spec, in birth order."""
        self._next_alias = 1
        for spec in node_metrics:
            self._learn(None, spec)
        for device, specs in devices.items():
            self._metrics.setdefault(device, {})
            for spec in specs:
                self._learn(device, spec)
        self._last: dict[tuple[str | None, str], tuple[Value, int]] = {}
        self._seq = 0
        self._dead: set[str] = set()
        self.bdseq = 0

    def _learn(self, device: str | None, spec: Spec) -> None:
        known = self._metrics.setdefault(device, {})
        if spec.name not in known:
            known[spec.name] = _Known(self._next_alias, spec)
            self._next_alias += 1

    def alias_of(self, device: str | None, name: str) -> int | None:
        known = self._metrics.get(device, {}).get(name)
        return known.alias if known else None

    @property
    def devices(self) -> list[str]:
        return [d for d in self._metrics if d is not None]

    def _take_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % 256
        return seq

    def _topic(self, message_type: str, device: str | None) -> str:
        if device is None:
            return topics.node_topic(self.group, message_type, self.node)
        return topics.device_topic(self.group, message_type, self.node, device)

    def death(self, bdseq: int, now_ms: int) -> Outgoing:
        """NDEATH: the will of the connection numbered `bdseq` (and what a clean stop sends)."""
        payload = Payload(now_ms, None, [Metric(BDSEQ, None, DataType.INT64, bdseq)])
        return Outgoing(self._topic("NDEATH", None), codec.encode(payload), 1, False, "NDEATH",
                        None)

    def births(self, bdseq: int, now_ms: int) -> list[Outgoing]:
        """NBIRTH (seq 0) and a DBIRTH for each device not known to be down."""
        self.bdseq = bdseq
        self._seq = 0
        node = [Metric(BDSEQ, None, DataType.INT64, bdseq, now_ms),
                Metric(REBIRTH, None, DataType.BOOLEAN, False, now_ms),
                *self._birth_metrics(None, now_ms)]
        out = [self._message("NBIRTH", None, node, now_ms, qos=0)]
        out += [self.device_birth(d, now_ms) for d in self.devices if d not in self._dead]
        return out

    def device_birth(self, device: str, now_ms: int) -> Outgoing:
        return self._message("DBIRTH", device, self._birth_metrics(device, now_ms), now_ms, qos=0)

    def _birth_metrics(self, device: str | None, now_ms: int) -> list[Metric]:
        metrics = []
        for name, (alias, spec) in self._metrics.get(device, {}).items():
            value, at = self._last.get((device, name), (None, now_ms))
            metrics.append(Metric(name, alias, spec.datatype, value, at,
                                  properties=spec.properties))
        return metrics

    def _message(self, message_type: str, device: str | None, metrics: list[Metric],
                 now_ms: int, *, qos: int, carries_event: bool = False) -> Outgoing:
        payload = Payload(now_ms, self._take_seq(), metrics)
        return Outgoing(self._topic(message_type, device), codec.encode(payload), qos,
                        carries_event, message_type, device)

    def translate(self, event: Envelope, *, historical: bool,
                  now_ms: int) -> list[Outgoing] | None:
        """The messages that carry one stored event; exactly one of them `carries_event`.

        None: the event is about a device that is dead (DDEATH sent); it may not have data
        until it is born again, so the caller keeps it and sends it after that DBIRTH.
        """
        device = None if event.device == GATEWAY_DEVICE else event.device
        health = event.kind == DEVICE_HEALTH and not historical and device is not None
        status = event.data.get("status") if health else None
        dead = device is not None and device in self._dead
        reviving = dead and status in ("up", "degraded")
        if dead and not reviving and status != "down":
            return None
        readings = self._typed(device, event_readings(event))
        out: list[Outgoing] = []
        new = [r for r in readings if self.alias_of(device, r.name) is None]
        for reading in new:
            self._learn(device, Spec(reading.name, reading.datatype))
        if not historical:
            for r in readings:
                self._last[(device, r.name)] = (r.value, r.timestamp_ms)
        if device is None:
            if new:  # a node metric is born only with the node, and its devices with it
                out += self.births(self.bdseq, now_ms)
        else:
            if reviving:
                self._dead.discard(device)
            if (new and status != "down") or reviving:
                out.append(self.device_birth(device, now_ms))
        metrics = [Metric(None, self.alias_of(device, r.name), r.datatype, r.value,
                          r.timestamp_ms, historical) for r in readings]
        if status == "down" and device is not None:
            self._dead.add(device)
            kind = "DDEATH"
        else:
            kind = "NDATA" if device is None else "DDATA"
        out.append(self._message(kind, device, metrics, now_ms, qos=1, carries_event=True))
        return out

    def _typed(self, device: str | None, readings: Iterable[Reading]) -> list[Reading]:
        """Readings whose name is known with another datatype are left out (logged): a birth
        fixed the type, and a host would misread the value."""
        kept = []
        for r in readings:
            known = self._metrics.get(device, {}).get(r.name)
            if known is not None and known.spec.datatype != r.datatype:
                log.warning("sparkplug_metric_type_mismatch", device=device, metric=r.name,
                            declared=int(known.spec.datatype), got=int(r.datatype))
                continue
            kept.append(r)
        return kept


def is_rebirth_request(payload: bytes) -> bool:
    """An NCMD that asks for `Node Control/Rebirth` = true."""
    try:
        decoded = codec.decode(payload)
    except codec.PayloadError:
        return False
    return any(m.name == REBIRTH and m.value is True for m in decoded.metrics)


def host_online(payload: bytes) -> tuple[bool, int] | None:
    """A Primary Host's 3.0 STATE message as (online, timestamp ms), None when malformed."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("online"), bool):
        return None
    stamp = obj.get("timestamp")
    return obj["online"], stamp if isinstance(stamp, int) else 0
