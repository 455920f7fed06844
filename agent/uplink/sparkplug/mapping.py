"""Agent events as Sparkplug metrics: which names, datatypes and values each kind becomes
(docs/sparkplug.md has the table), and every metric a device or the gateway can send, read
from the configuration, for the births.

One name has one datatype for ever (a birth declares it): numbers are Double, counts Int64,
states and texts String, flags Boolean. Anything without a fixed place becomes one String
metric `Events/<kind>` holding the event's data as JSON, so that no kind is ever lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from agent.config.models import AgentConfig, DeviceConfig
from agent.events import (
    ANOMALY,
    CHANGE,
    CLOCK,
    COMMAND_ANSWER,
    CONFIG_APPLIED,
    CONFIG_REJECTED,
    CONFIG_ROLLED_BACK,
    DEVICE_HEALTH,
    ENERGY,
    HEARTBEAT,
    LIMIT,
    QUALITY,
    SAMPLES,
    STATE,
    STORE_HEALTH,
    WINDOW,
    WINDOWS_LOST,
    Envelope,
)
from agent.store.sharing import SharingPolicy
from agent.uplink.sparkplug.codec import DataType, Value

D, I, S, B = DataType.DOUBLE, DataType.INT64, DataType.STRING, DataType.BOOLEAN

WINDOW_STATS = (("mean", D), ("min", D), ("max", D), ("last", D), ("std", D), ("count", I),
                ("bad", I))
"""A window's statistics of a tag: `TAG/mean` ... (`count` is the window's `n`)."""
COUNTER_STATS = (("increase", D), ("resets", I))
MACHINE_STATES = ("off", "idle", "running", "overload")
RULE_METRICS = (("active", B), ("episode", S), ("score", D), ("threshold", D),
                ("peak_value", D), ("duration_s", D), ("bound", S), ("limit", D),
                ("max_excess", D))
HEALTH_METRICS = (("Health/status", S), ("Health/reason", S), ("Health/detail", S))
GATEWAY_METRICS = (
    ("Gateway/uptime_s", D), ("Gateway/version", S), ("Gateway/config_sha256", S),
    ("Gateway/windows_lost", I), ("Gateway/store/depth", I), ("Gateway/store/pending", I),
    ("Gateway/store/bytes", I), ("Gateway/store/last_seq", I),
    ("Gateway/store/oldest_age_s", D), ("Gateway/store/bytes_written", I),
    ("Gateway/uplink/state", S), ("Gateway/uplink/inflight", I),
    ("Gateway/process/cpu_s", D), ("Gateway/process/rss_bytes", I),
    ("Store/id", S), ("Store/compacted", I), ("Store/bytes", I), ("Store/max_bytes", I),
    ("Store/resent_after_crash", I), ("Store/lost_seqs", S),
    ("Clock/boot", S), ("Clock/mono_ns", I), ("Windows lost/windows", S),
    ("Windows lost/total", I),
)
"""The node's own metrics (NBIRTH, NDATA) besides `bdSeq` and `Node Control/Rebirth`."""


class Reading(NamedTuple):
    """A metric's value at a time, before it has an alias."""

    name: str
    datatype: DataType
    value: Value
    timestamp_ms: int


class Spec(NamedTuple):
    """A metric a birth declares: its name, datatype and properties (units, ranges)."""

    name: str
    datatype: DataType
    properties: Mapping[str, str | float] = {}


def readings(event: Envelope) -> list[Reading]:
    """What one stored event says, as metrics (NDATA for `_gateway`, DDATA for a device)."""
    ms = event.time_ns // 1_000_000
    data = event.data
    kind = event.kind
    if kind == WINDOW:
        return list(_window(data, _ms(data.get("end_ns"), ms)))
    if kind == SAMPLES:
        return list(_samples(data))
    if kind == CHANGE:
        return [Reading(f"{tag}/{'text' if isinstance(c.get('value'), str) else 'value'}",
                        S if isinstance(c.get("value"), str) else D, c.get("value"), ms)
                for tag, c in data.get("tags", {}).items()]
    if kind == QUALITY:
        return [Reading(f"{tag}/quality", S, q.get("quality"), ms)
                for tag, q in data.get("tags", {}).items()]
    if kind == STATE:
        base = f"Machines/{data.get('machine')}"
        return [Reading(f"{base}/state", S, data.get("to"), _ms(data.get("at_ns"), ms)),
                Reading(f"{base}/previous_state", S, data.get("from"), ms),
                Reading(f"{base}/previous_dwell_s", D, _num(data.get("dwell_s"), D), ms)]
    if kind == ENERGY:
        return list(_energy(data, _ms(data.get("end_ns"), ms)))
    if kind in (ANOMALY, LIMIT):
        return list(_episode(data, ms))
    if kind == DEVICE_HEALTH:
        return [Reading(name, dtype, str(data.get(name.split("/")[1], "")), ms)
                for name, dtype in HEALTH_METRICS]
    if kind == HEARTBEAT:
        return list(_heartbeat(data, ms))
    if kind == STORE_HEALTH:
        return list(_store_health(data, ms))
    if kind == CLOCK:
        return [Reading("Clock/boot", S, str(data.get("boot", "")), ms),
                Reading("Clock/mono_ns", I, _num(data.get("mono"), I), ms)]
    if kind == WINDOWS_LOST:
        return [Reading("Windows lost/windows", S, json.dumps(data.get("windows", [])), ms),
                Reading("Windows lost/total", I, _num(data.get("lost_total"), I), ms)]
    return [Reading(f"Events/{kind}", S, json.dumps(data, sort_keys=True, default=str), ms)]


def _ms(ns: object, default: int) -> int:
    return ns // 1_000_000 if isinstance(ns, int) else default


def _num(value: object, dtype: DataType) -> Value:
    """A number as the datatype wants it; None stays None (sent as is_null)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if dtype == DataType.INT64 else float(value)


def _window(data: Mapping[str, Any], ms: int) -> Iterator[Reading]:
    for tag, stats in data.get("tags", {}).items():
        for stat, dtype in WINDOW_STATS:  # a window without a good sample: its stats are null
            yield Reading(f"{tag}/{stat}", dtype,
                          _num(stats.get("n" if stat == "count" else stat), dtype), ms)
        for stat, dtype in COUNTER_STATS:
            if stat in stats:
                yield Reading(f"{tag}/{stat}", dtype, _num(stats[stat], dtype), ms)


def _samples(data: Mapping[str, Any]) -> Iterator[Reading]:
    t0 = data.get("t0_ns", 0) // 1_000_000
    offsets = data.get("dt_ms", [])
    for tag, cells in data.get("tags", {}).items():
        for offset, value in zip(offsets, cells, strict=False):
            if value is not None:  # a bad sample or none at that row: no reading
                yield Reading(f"{tag}/value", D, float(value), t0 + offset)


def _energy(data: Mapping[str, Any], ms: int) -> Iterator[Reading]:
    base = f"Machines/{data.get('machine')}"
    yield Reading(f"{base}/period", S, str(data.get("period", "")), ms)
    yield Reading(f"{base}/complete", B, bool(data.get("complete", True)), ms)
    kwh = data.get("kwh") or {}
    hours = data.get("hours") or {}
    for state in MACHINE_STATES:
        yield Reading(f"{base}/kwh/{state}", D, _num(kwh.get(state), D), ms)
        yield Reading(f"{base}/hours/{state}", D, _num(hours.get(state), D), ms)
    for key, dtype in _ENERGY_FIGURES:
        yield Reading(f"{base}/{key}", dtype, _num(data.get(key), dtype), ms)
    totals = data.get("totals") or {}
    total_kwh = totals.get("kwh") or {}
    for state in MACHINE_STATES:
        yield Reading(f"{base}/totals/kwh/{state}", D, _num(total_kwh.get(state), D), ms)
    for key, dtype in (("operating_h", D), ("starts", I), ("cycles", D)):
        yield Reading(f"{base}/totals/{key}", dtype, _num(totals.get(key), dtype), ms)


_ENERGY_FIGURES = (("total_kwh", D), ("idle_kwh", D), ("operating_h", D), ("starts", I),
                   ("peak_demand_w", D), ("unmeasured_s", D), ("counter_resets", I),
                   ("cycles", D), ("kwh_per_cycle", D))


def _episode(data: Mapping[str, Any], ms: int) -> Iterator[Reading]:
    base = f"Rules/{data.get('rule')}"
    if "band" in data:
        base += f"/{data['band']}"
    start = data.get("phase") == "start"
    yield Reading(f"{base}/active", B, start, _ms(data.get("start_ns" if start else "end_ns"), ms))
    for key, dtype in RULE_METRICS[1:]:
        if key in data:
            value = data[key] if dtype == S else _num(data[key], dtype)
            yield Reading(f"{base}/{key}", dtype, value, ms)


def _heartbeat(data: Mapping[str, Any], ms: int) -> Iterator[Reading]:
    flat = {"uptime_s": data.get("uptime_s"), "version": data.get("version"),
            "config_sha256": data.get("config_sha256"),
            "windows_lost": data.get("windows_lost")}
    for section in ("store", "uplink", "process"):
        for key, value in (data.get(section) or {}).items():
            flat[f"{section}/{key}"] = value
    for name, dtype in GATEWAY_METRICS:
        if not name.startswith("Gateway/"):
            continue
        value = flat.get(name.removeprefix("Gateway/"))
        if dtype == S:
            yield Reading(name, S, None if value is None else str(value), ms)
        else:
            yield Reading(name, dtype, _num(value, dtype), ms)


def _store_health(data: Mapping[str, Any], ms: int) -> Iterator[Reading]:
    yield Reading("Store/id", S, str(data.get("store", "")), ms)
    for kind, count in (data.get("dropped") or {}).items():
        yield Reading(f"Store/dropped/{kind}", I, _num(count, I), ms)
    for key in ("compacted", "bytes", "max_bytes", "resent_after_crash"):
        if key in data:
            yield Reading(f"Store/{key}", I, _num(data[key], I), ms)
    lost = {k: data[k] for k in ("dropped_seqs", "merged_seqs", "seq_skipped") if k in data}
    if lost:  # the event seq ranges the cloud will not get (docs/events.md, store_health)
        yield Reading("Store/lost_seqs", S, json.dumps(lost, sort_keys=True), ms)


def device_specs(config: AgentConfig) -> dict[str, list[Spec]]:
    """Every metric each shared device can send (a tag shared `none` is never named)."""
    policy = SharingPolicy(config.devices)
    out: dict[str, list[Spec]] = {}
    for device in config.devices:
        if device.share == "none":
            continue
        specs = list(_tag_specs(device, policy))
        specs += [Spec(name, dtype) for name, dtype in HEALTH_METRICS]
        for machine in config.machines_of(device.name):
            if policy.share_of(device.name, machine.signal_tag) == "none":
                continue
            base = f"Machines/{machine.name}"
            specs += [Spec(f"{base}/state", S), Spec(f"{base}/previous_state", S),
                      Spec(f"{base}/previous_dwell_s", D), Spec(f"{base}/period", S),
                      Spec(f"{base}/complete", B)]
            specs += [Spec(f"{base}/{what}/{state}", D) for state in MACHINE_STATES
                      for what in ("kwh", "hours", "totals/kwh")]
            specs += [Spec(f"{base}/{key}", dtype) for key, dtype in _ENERGY_FIGURES]
            specs += [Spec(f"{base}/totals/{k}", t)
                      for k, t in (("operating_h", D), ("starts", I), ("cycles", D))]
        for name, rule in config.rules_of(device.name):
            if all(policy.share_of(device.name, t) == "none" for t in rule.tags):
                continue
            bases = [f"Rules/{name}"]
            bands = getattr(rule, "bands", None)
            if bands:
                bases = [f"Rules/{name}/{band.name}" for band in bands]
            specs += [Spec(f"{base}/{key}", dtype) for base in bases
                      for key, dtype in RULE_METRICS]
        out[device.name] = list({s.name: s for s in specs}.values())
    return out


def _tag_specs(device: DeviceConfig, policy: SharingPolicy) -> Iterator[Spec]:
    for tag in device.tags:
        share = policy.share_of(device.name, tag.name)
        if share == "none":
            continue
        props: dict[str, str | float] = {}
        if tag.unit:
            props["engUnit"] = tag.unit
        if tag.valid_range is not None:
            props["engLow"], props["engHigh"] = tag.valid_range
        if getattr(tag, "type", "") == "string":
            yield Spec(f"{tag.name}/text", S)
        else:
            if share in ("raw", "aggregates"):
                for stat, dtype in WINDOW_STATS:
                    yield Spec(f"{tag.name}/{stat}", dtype, props if dtype == D else {})
                if tag.counter:
                    yield Spec(f"{tag.name}/increase", D, props)
                    yield Spec(f"{tag.name}/resets", I)
            yield Spec(f"{tag.name}/value", D, props)
        yield Spec(f"{tag.name}/quality", S)


_STORED_KINDS = (SAMPLES, WINDOW, CHANGE, DEVICE_HEALTH, QUALITY, STATE, ENERGY, ANOMALY, LIMIT,
                 STORE_HEALTH, WINDOWS_LOST, HEARTBEAT, CLOCK, CONFIG_APPLIED, CONFIG_REJECTED,
                 CONFIG_ROLLED_BACK, COMMAND_ANSWER)


def node_specs() -> list[Spec]:
    return [*(Spec(name, dtype) for name, dtype in GATEWAY_METRICS),
            *(Spec(f"Store/dropped/{kind}", I) for kind in _STORED_KINDS),
            *(Spec(f"Events/{kind}", S) for kind in (CONFIG_APPLIED, CONFIG_REJECTED,
                                                      CONFIG_ROLLED_BACK, COMMAND_ANSWER))]
