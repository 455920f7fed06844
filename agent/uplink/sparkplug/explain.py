"""`edge-agent check --explain` for `mqtt.format: sparkplug`: the topics the Edge Node publishes
and every metric its births declare, i.e. all that its data messages can carry.

The metrics come from the same `mapping.device_specs` the births are made of, so the customer
signs off on exactly what will be sent; a tag shared `none` is never named there.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.config.models import AgentConfig
from agent.uplink.sparkplug import topics
from agent.uplink.sparkplug.mapping import device_specs, node_specs
from agent.uplink.sparkplug.session import BDSEQ, REBIRTH


def _folded(names: Iterable[str]) -> str:
    """`a/mean, a/min, b/value` as `a/{mean, min}, b/value`: one entry per tag or folder."""
    folders: dict[str, list[str]] = {}
    for name in names:
        folder, _, leaf = name.rpartition("/")
        folders.setdefault(folder, []).append(leaf)
    parts = []
    for folder, leaves in folders.items():
        if not folder:
            parts += leaves
        elif len(leaves) == 1:
            parts.append(f"{folder}/{leaves[0]}")
        else:
            parts.append(f"{folder}/{{{', '.join(leaves)}}}")
    return ", ".join(parts)


def explain_sparkplug(config: AgentConfig) -> list[str]:
    spb, gw = config.mqtt.sparkplug, config.gateway
    group, node = spb.group_id or gw.site, gw.id
    lines = [
        (f"  Sparkplug B 3.0 (mqtt.format: sparkplug), Edge Node {group}/{node}; data by "
         "alias, births with names, units and ranges"),
        f"  {topics.node_topic(group, 'NBIRTH', node)}, {topics.node_topic(group, 'NDATA', node)}",
        f"      {BDSEQ}, {REBIRTH}, and the gateway's own figures (heartbeat, store health, "
        "clock, lost windows; remote configuration answers as Events/<kind> JSON): "
        + _folded(s.name for s in node_specs()),
        f"  {topics.node_topic(group, 'NDEATH', node)}",
        "      the last will (and a clean stop): bdSeq only",
    ]
    for device, specs in device_specs(config).items():
        birth = topics.device_topic(group, "DBIRTH", node, device)
        lines.append(f"  {birth}, {birth.replace('/DBIRTH/', '/DDATA/')}, "
                     f"{birth.replace('/DBIRTH/', '/DDEATH/')}")
        lines.append("      " + _folded(s.name for s in specs))
    subscribed = [topics.node_topic(group, "NCMD", node)]
    if spb.primary_host_id:
        subscribed.append(topics.state_topic(spb.primary_host_id))
    lines.append("  Subscribed (nothing of the site's data): " + ", ".join(subscribed))
    return lines
