"""What a configuration reload (SIGHUP) changes: decided here, applied by the supervisor.

A reload must not lose the buffered events (the store stays open) nor the open windows of
unchanged devices, so the new configuration is compared section by section (pydantic model
equality). A device is kept when its configuration, machines, `detectors:` rules and the
aggregate window are unchanged; a removed or changed one is stopped (windows and episodes
flushed, machine counters saved), a new or changed one started (its detectors learn again).
A changed `mqtt` recreates the uplink on the same store (in Sparkplug format so does a changed
device: its births change); `health` applies at once; a change
of `gateway`, `store`, `log` or `remote` (fixed for the process: the store's path, the identity in
stored events, bound loggers) is refused and logged, and takes effect at the next start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config import AgentConfig


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    config: AgentConfig
    """What runs from now on: the new configuration, refused sections kept as they were."""
    keep: list[str] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    mqtt_changed: bool = False
    refused: list[str] = field(default_factory=list)
    """One line per change that is not applied (the running value is kept)."""


def plan_reload(old: AgentConfig, new: AgentConfig) -> ReloadPlan:
    refused = []
    if new.store_path != old.store_path:
        refused.append(f"store path: {new.store_path} cannot replace the open store "
                       f"{old.store_path} while running (its buffered events are there); "
                       "keeping the old path until the next start")
    if new.gateway.model_copy(update={"state_dir": old.gateway.state_dir}) != old.gateway:
        refused.append("gateway: id, site and clock apply at the next start")
    elif new.gateway.state_dir != old.gateway.state_dir and new.store_path == old.store_path:
        refused.append("gateway.state_dir: applies at the next start")
    if new.store.model_copy(update={"path": old.store.path}) != old.store:
        refused.append("store: commit and bound settings apply at the next start")
    if new.log != old.log:
        refused.append("log: the level applies at the next start")
    if new.remote != old.remote:
        refused.append("remote: enabling, keys and topic apply at the next start")
    applied = new.model_copy(update={"gateway": old.gateway, "store": old.store, "log": old.log,
                                     "remote": old.remote})

    window_same = new.aggregate == old.aggregate
    before = {d.name: d for d in old.devices}
    after = {d.name: d for d in new.devices}
    keep = [n for n, d in after.items() if window_same and before.get(n) == d
            and new.machines_of(n) == old.machines_of(n) and new.rules_of(n) == old.rules_of(n)]
    stop = [n for n in before if n not in keep]
    start = [n for n in after if n not in keep]
    # Sparkplug births declare every metric the devices can send, and only a new connection
    # (a new uplink) may declare other ones without confusing a host about the old.
    births_changed = new.mqtt.format == "sparkplug" and bool(start or stop)
    return ReloadPlan(config=applied, keep=keep, start=start, stop=stop,
                      mqtt_changed=new.mqtt != old.mqtt or births_changed, refused=refused)
