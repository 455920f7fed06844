"""`edge-agent tail` for `mqtt.format: sparkplug`: each Sparkplug B message decoded, one line.

Data goes by alias; the names come from the births this tail has seen (a tail started after
them shows `#alias` until the next birth: a Rebirth NCMD brings one at once).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from agent.uplink.sparkplug import codec, topics
from agent.uplink.sparkplug.codec import DataType

MAX_LINE = 240


def sparkplug_filter(group: str, node: str) -> str:
    """Every message of one Edge Node and its devices (`#` matches the node's own level too)."""
    return f"{topics.NAMESPACE}/{group}/+/{node}/#"


class SparkplugReader:
    """Decodes the messages of one subscription, keeping each birth's alias -> name."""

    def __init__(self) -> None:
        self._names: dict[tuple[str, str, str | None], dict[int, str]] = {}

    def read(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        """The message as a JSON-ready map, or None when the topic is not Sparkplug's."""
        parsed = topics.parse(topic)
        if parsed is None or parsed.message_type == "STATE":
            return None
        decoded = codec.decode(payload)
        key = (parsed.group, parsed.node, parsed.device)
        if parsed.message_type in ("NBIRTH", "DBIRTH"):
            if parsed.message_type == "NBIRTH":  # the node's devices are born again after it
                self._names = {k: v for k, v in self._names.items() if k[:2] != key[:2]}
            self._names[key] = {m.alias: m.name for m in decoded.metrics
                                if m.alias is not None and m.name is not None}
        names = self._names.get(key, {})
        return {
            "topic": topic, "type": parsed.message_type, "group": parsed.group,
            "node": parsed.node, "device": parsed.device, "seq": decoded.seq,
            "timestamp": decoded.timestamp_ms,
            "metrics": [{
                "name": m.name or (names.get(m.alias) if m.alias is not None else None),
                "alias": m.alias,
                "datatype": _type_name(m.datatype),
                "value": m.value,
                "timestamp": m.timestamp_ms,
                **({"historical": True} if m.historical else {}),
                **({"properties": dict(m.properties)} if m.properties else {}),
            } for m in decoded.metrics],
        }


def _type_name(datatype: int | None) -> str | None:
    try:
        return DataType(datatype).name.title() if datatype is not None else None
    except ValueError:
        return str(datatype)


def format_message(message: dict[str, Any]) -> str:
    """One line: time, node[/device], type, seq, then name=value for each metric."""
    stamp = dt.datetime.fromtimestamp(message["timestamp"] / 1e3, tz=dt.UTC)
    when = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    where = message["node"] + (f"/{message['device']}" if message["device"] else "")
    seq = "" if message["seq"] is None else f" seq={message['seq']}"
    parts = []
    for metric in message["metrics"]:
        name = metric["name"] or f"#{metric['alias']}"
        value = "null" if metric["value"] is None else metric["value"]
        parts.append(f"{name}={value}" + (" (hist)" if metric.get("historical") else ""))
    text = f"{when} {where} {message['type']}{seq}: " + "; ".join(parts)
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."
