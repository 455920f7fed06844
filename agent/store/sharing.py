"""What leaves the site: the configuration's `share` levels, enforced on every event.

Applied once, between detection and the store, so that nothing not shared is
ever queued for sending. `explain` says the same in words for the customer to
sign off (`edge-agent check --explain`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.config.models import AgentConfig, DeviceConfig
from agent.events import (
    ANOMALY,
    CHANGE,
    CLOCK,
    COMMAND_ANSWER,
    CONFIG_APPLIED,
    CONFIG_REJECTED,
    CONFIG_ROLLED_BACK,
    ENERGY,
    GATEWAY_DEVICE,
    HEARTBEAT,
    LIMIT,
    SAMPLES,
    STATE,
    STORE_HEALTH,
    WINDOW,
    WINDOWS_LOST,
    Event,
)
from drivers.sharing import Share, effective_share

_SHARED_IN = {WINDOW: ("raw", "aggregates"), SAMPLES: ("raw",), ENERGY: ("raw", "aggregates"),
              ANOMALY: ("raw", "aggregates", "events"), LIMIT: ("raw", "aggregates", "events")}
"""Event kinds that carry tag values, and the share levels that let a tag's values in.
Other kinds (state changes) pass for every level but `none`. Anomaly and limit events carry
a few raw samples around the episode (their context): `events` is the level that means
"values inside events only", so it lets them out."""



class SharingPolicy:
    def __init__(self, devices: Sequence[DeviceConfig]) -> None:
        self._device: dict[str, Share] = {d.name: d.share for d in devices}
        self._tag: dict[str, dict[str, Share]] = {
            d.name: {t.name: effective_share(d, t.share) for t in d.tags} for d in devices
        }

    def device_share(self, device: str) -> Share | None:
        return self._device.get(device)

    def share_of(self, device: str, tag: str) -> Share:
        return self._tag[device][tag]

    def apply(self, event: Event) -> Event | None:
        """The event as far as it may leave the site, or None when nothing of it may."""
        device_share = self._device.get(event.device)
        if device_share is None:  # about the gateway itself: no measured values
            return event
        allowed = _SHARED_IN.get(event.kind, ("raw", "aggregates", "events"))
        tag = event.data.get("tag")
        if isinstance(tag, str):  # about one tag (a machine's events: its power or current tag)
            return event if self._tag[event.device].get(tag) in allowed else None
        tags = event.data.get("tags")
        if not isinstance(tags, dict):
            return None if device_share == "none" else event
        kept = {t: v for t, v in tags.items() if self._tag[event.device].get(t) in allowed}
        if not kept:
            return None
        if len(kept) == len(tags):
            return event
        data = {**event.data, "tags": kept}
        bad = data.get("bad")
        if isinstance(bad, dict):  # a samples event's bad rows, per tag: never an unshared name
            data["bad"] = {t: rows for t, rows in bad.items() if t in kept}
            if not data["bad"]:
                del data["bad"]
        return Event(event.kind, event.device, event.time_ns, data)

    def tags_with(self, device: str, levels: Sequence[str]) -> list[str]:
        return [t for t, share in self._tag[device].items() if share in levels]


def explain(config: AgentConfig,
            sparkplug: Callable[[AgentConfig], list[str]] | None = None) -> list[str]:
    """Every topic the agent publishes to, and exactly which data goes there; with
    `mqtt.format: sparkplug`, `sparkplug` gives the topics and metrics (the uplink's floor)."""
    policy = SharingPolicy(config.devices)
    mqtt, gw = config.mqtt, config.gateway

    def topic(device: str, kind: str) -> str:
        return mqtt.topic.format(site=gw.site, gateway=gw.id, device=device, kind=kind)

    scheme = "mqtts" if mqtt.tls.enabled else "mqtt (NOT encrypted)"
    window = f"{config.aggregate.window_s:g} s"
    lines = [f"What leaves this gateway, to {scheme}://{mqtt.host}:{mqtt.effective_port}:"]
    kept: list[str] = []
    events_only: list[str] = []
    for device in config.devices:
        aggregated = policy.tags_with(device.name, ("raw", "aggregates"))
        raw = policy.tags_with(device.name, ("raw",))
        kept += [f"{device.name}.{t}" for t in policy.tags_with(device.name, ("none",))]
        events_only += [f"{device.name}.{t}" for t in policy.tags_with(device.name, ("events",))]
        if aggregated:
            lines.append(f"  {topic(device.name, WINDOW)}")
            lines.append(f"      every {window}: count, min, max, mean, std and last value of "
                         + ", ".join(aggregated))
        if raw:
            lines.append(f"  {topic(device.name, SAMPLES)}")
            lines.append(f"      every {window}: every sample of " + ", ".join(raw))
        watched = [t.name for t in device.tags if getattr(t, "report_on_change", False)
                   or getattr(t, "type", "") == "string"]
        watched = [t for t in watched if policy.share_of(device.name, t) != "none"]
        texts_any = device.protocol == "opcua" and device.share != "none"
        if watched or texts_any:
            lines.append(f"  {topic(device.name, CHANGE)}")
            lines.append("      when the value changes (beyond its deadband): "
                         + ", ".join([*watched, *(["any tag whose value is text"] if texts_any else [])]))
        with_events = policy.tags_with(device.name, ("raw", "aggregates", "events"))
        if with_events:
            lines.append(f"  {topic(device.name, 'quality')}")
            lines.append("      when a tag's quality changes (good, uncertain, bad; no measured "
                         "values): " + ", ".join(with_events))
        for machine in config.machines_of(device.name):
            share = policy.share_of(device.name, machine.signal_tag)
            if share != "none":
                lines.append(f"  {topic(device.name, STATE)}")
                lines.append(f"      machine {machine.name}: each change of state (off, idle, "
                             f"running, overload) told by {machine.signal_tag}")
            if share in _SHARED_IN[ENERGY]:
                lines.append(f"  {topic(device.name, ENERGY)}")
                lines.append(f"      machine {machine.name}: every {machine.report_interval_s:g} s"
                             + (" and every shift" if machine.shifts else "")
                             + ": energy and hours per state, starts, peak demand"
                             + (", cycles" if machine.cycle_counter_tag else ""))
        ruled = [t for _, rule in config.rules_of(device.name) for t in rule.tags
                 if policy.share_of(device.name, t) != "none"]
        if ruled:
            shown = ", ".join(dict.fromkeys(ruled))
            lines.append(f"  {topic(device.name, ANOMALY)}, {topic(device.name, LIMIT)}")
            lines.append("      when an anomaly or limit violation starts and ends: score, "
                         "times, and the samples just before and after it of " + shown)
        if device.share != "none":
            lines.append(f"  {topic(device.name, 'device_health')}")
            lines.append("      when the connection status changes: up/down and why "
                         "(no measured values)")
    lines += [
        f"  {topic(GATEWAY_DEVICE, HEARTBEAT)}",
        (
            f"      every {config.health.heartbeat_s:g} s and on change: uptime, version, "
            "configuration hash, status of each device not shared as none, store depth, link "
            "state, CPU and memory"
        ),
        f"  {topic(GATEWAY_DEVICE, STORE_HEALTH)}",
        "      when events had to be compacted or dropped: their counts (no measured values)",
        f"  {topic(GATEWAY_DEVICE, WINDOWS_LOST)}",
        ("      at a start after a power cut: which devices' windows were lost, and when "
         "they began (no measured values)"),
        f"  {topic(GATEWAY_DEVICE, CLOCK)}",
        "      once, when NTP has set the clock: the boot's monotonic-to-UTC mapping",
        f"  {topic(GATEWAY_DEVICE, 'status')}",
        "      retained: online/offline, agent version, configuration hash",
    ]
    remote = config.remote
    if remote.enabled:
        command_topic = remote.topic.format(site=config.gateway.site, gateway=config.gateway.id)
        replies = ", ".join(topic(GATEWAY_DEVICE, kind) for kind in (
            CONFIG_APPLIED, CONFIG_REJECTED, CONFIG_ROLLED_BACK))
        lines += [
            f"  {replies}",
            ("      remote configuration: each signed message received on "
             f"{command_topic}, applied, refused (and why) or rolled back; version and hash"),
            f"  {topic(GATEWAY_DEVICE, COMMAND_ANSWER)}",
            ("      the answer to a signed command (relearn, reload, status, buffer stats); "
             "status names no device shared as none"),
        ]
    if sparkplug is not None and mqtt.format == "sparkplug":
        lines = lines[:1] + sparkplug(config)
    if events_only:
        lines.append("Sent only inside events (anomalies, limits, state changes), never "
                     "periodically: " + ", ".join(events_only))
    lines.append("Never leaves the site: " + (", ".join(kept) if kept else "(nothing marked share: none)"))
    interval = f"{config.store.commit_interval_s:g} s"
    outage = f"{config.store.outage_commit_interval_s:g} s"
    lines.append(f"Kept until the broker acknowledges it: each event is sent at once and written "
                 f"to the store only if not acknowledged within {interval}; a power cut loses at "
                 f"most the events of the last {interval} the broker had not acknowledged "
                 f"(while the broker is unreachable: of the last {outage}, alarms of the last "
                 f"{interval}; their seq range is reported in store_health) and each device's "
                 "open window of at "
                 f"most {config.aggregate.window_s:g} s of aggregates (named in windows_lost), "
                 "a crash of the agent loses none")
    return lines
