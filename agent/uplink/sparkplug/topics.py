"""Sparkplug B topic names (spec, Topics): `spBv1.0/{group}/{type}/{edge node}[/{device}]`, and
`spBv1.0/STATE/{host id}` where a Primary Host Application says whether it is online.

Group, node and device ids are configuration identifiers (letters, digits, `_.-`), so they can
never hold the `/`, `+` or `#` the spec forbids in them.
"""

from __future__ import annotations

from typing import NamedTuple

NAMESPACE = "spBv1.0"
NODE_TYPES = ("NBIRTH", "NDEATH", "NDATA", "NCMD")
DEVICE_TYPES = ("DBIRTH", "DDEATH", "DDATA", "DCMD")


class Topic(NamedTuple):
    group: str
    message_type: str
    """NBIRTH, DDATA, ... or STATE (then `node` is the host id)."""
    node: str
    device: str | None = None


def node_topic(group: str, message_type: str, node: str) -> str:
    return f"{NAMESPACE}/{group}/{message_type}/{node}"


def device_topic(group: str, message_type: str, node: str, device: str) -> str:
    return f"{NAMESPACE}/{group}/{message_type}/{node}/{device}"


def state_topic(host_id: str) -> str:
    return f"{NAMESPACE}/STATE/{host_id}"


def parse(topic: str) -> Topic | None:
    """The parts of a Sparkplug B topic, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == NAMESPACE and parts[1] == "STATE":
        return Topic("", "STATE", parts[2])
    if parts[0] != NAMESPACE or len(parts) not in (4, 5):
        return None
    kind = parts[2]
    if len(parts) == 4 and kind in NODE_TYPES:
        return Topic(parts[1], kind, parts[3])
    if len(parts) == 5 and kind in DEVICE_TYPES:
        return Topic(parts[1], kind, parts[3], parts[4])
    return None
