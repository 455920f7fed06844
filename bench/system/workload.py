"""What the system benchmark serves and reads: a workload is a list of server kinds.

Each kind knows how to start its simulator (`simulator`, a script beside this file, with
`simulator_args()`), its device names, the agent's `devices:` entries that read them
(`agent_devices(ports)`), and, when ThingsBoard IoT Gateway can read the same thing, that
gateway's connector configuration. A simulator script prints one JSON line
`{"event": "listening", "ports": [...]}` (one port per device) and, on each SIGUSR1,
`{"event": "served", "samples": S}` (values read by any client so far, for Modbus; value
changes made, for OPC UA). Two kinds: `ModbusFleet` and `OpcUaFleet`. Every Modbus device
has a tag `stamp_ms` (below) read with `report_on_change`, for the change latency; OPC UA
tags have no `report_on_change` (the agent aggregates them into `window` events only), so
the latency is measured on the Modbus devices only. ThingsBoard IoT Gateway reads all of
it too: its Modbus connector, and one OPC UA connector per server
(`thingsboard_connectors`).

The register map of one Modbus device (50 tags, the same for every device):
- `stamp_ms`, holding 0-1, uint32, `report_on_change`: the simulator's wall-clock time in
  milliseconds (modulo 2**32) at the moment it last changed the value. The value *is* the
  change time, so the latency from a change to its arrival at the broker needs no trace.
- `h01`..`h19`, holding 2-20, uint16: slowly moving integers (levels, states, counters).
- `f01`..`f30`, input 0-59, float32: sines of different periods (powers, temperatures).
The agent reads this in two requests per poll (one per table); ThingsBoard's Modbus
connector sends one request per tag.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOLDING_WORDS = 2 + 19
FLOAT_TAGS = 30
UINT16_TAGS = 19


@dataclass(frozen=True)
class Connector:
    """One connector of ThingsBoard IoT Gateway: its type, its name (and file) and its
    configuration."""

    type: str
    name: str
    configuration: dict[str, Any]


@dataclass(frozen=True)
class TagSpec:
    name: str
    table: str
    """`holding` or `input`."""
    address: int
    type: str
    """`uint32`, `uint16` or `float32`."""


def device_tags(tags_per_device: int) -> tuple[TagSpec, ...]:
    """The map above, cut to `tags_per_device` (at least 1: the stamp), float tags first."""
    tags = [TagSpec("stamp_ms", "holding", 0, "uint32")]
    floats = [TagSpec(f"f{i + 1:02d}", "input", 2 * i, "float32") for i in range(FLOAT_TAGS)]
    ints = [TagSpec(f"h{i + 1:02d}", "holding", 2 + i, "uint16") for i in range(UINT16_TAGS)]
    rest = tags_per_device - 1
    if not 0 <= rest <= FLOAT_TAGS + UINT16_TAGS:
        raise ValueError(f"a device has 1 to {1 + FLOAT_TAGS + UINT16_TAGS} tags")
    tags += floats[: min(rest, FLOAT_TAGS)]
    tags += ints[: max(0, rest - FLOAT_TAGS)]
    return tuple(tags)


@dataclass(frozen=True)
class ModbusFleet:
    """`devices` Modbus TCP devices of `tags` tags each, one port per device, polled every
    `poll_interval_s`; each device's `stamp_ms` changes every `change_period_s`."""

    devices: int
    tags: int
    poll_interval_s: float = 1.0
    change_period_s: float = 2.0

    simulator = "modbus_farm.py"
    protocol = "Modbus TCP"

    def names(self) -> list[str]:
        return [f"plc-{index + 1:03d}" for index in range(self.devices)]

    def describe(self) -> str:
        return (f"{self.devices} Modbus TCP devices x {self.tags} tags polled every "
                f"{self.poll_interval_s:g} s (`stamp_ms` changing every "
                f"{self.change_period_s:g} s on average)")

    @property
    def samples_per_s(self) -> float:
        return self.devices * self.tags / self.poll_interval_s

    @property
    def stamp_changes_per_s(self) -> float:
        """Changes of `stamp_ms` made per second, over every device."""
        return self.devices / self.change_period_s

    def simulator_args(self) -> list[str]:
        """Arguments of `bench/system/modbus_farm.py` for this fleet."""
        return ["--devices", str(self.devices), "--tags", str(self.tags),
                "--change-period-s", str(self.change_period_s)]

    def agent_devices(self, ports: list[int]) -> str:
        """The `devices:` entries (YAML) of the agent's configuration."""
        entries = []
        for name, port in zip(self.names(), ports, strict=True):
            tags = "\n".join(
                f"      - {{name: {tag.name}, table: {tag.table}, address: {tag.address}, "
                f"type: {tag.type}"
                + (", report_on_change: true}" if tag.name == "stamp_ms" else "}")
                for tag in device_tags(self.tags)
            )
            entries.append(
                f"  - name: {name}\n"
                f"    protocol: modbus-tcp\n"
                f"    host: 127.0.0.1\n"
                f"    port: {port}\n"
                f"    poll_interval_s: {self.poll_interval_s}\n"
                f"    tags:\n{tags}\n"
            )
        return "".join(entries)

    def thingsboard_connectors(self, ports: list[int]) -> list[Connector]:
        """ThingsBoard's Modbus connector (the `modbus.json` file): the same tags as
        timeseries, the same poll period, each value sent as it is read (the gateway's default
        report strategy, ON_RECEIVED)."""
        types = {"uint32": "32uint", "uint16": "16uint", "float32": "32float"}
        function_codes = {"holding": 3, "input": 4}

        def timeseries(tag: TagSpec) -> dict[str, Any]:
            return {"tag": tag.name, "type": types[tag.type], "address": tag.address,
                    "objectsCount": 2 if tag.type != "uint16" else 1,
                    "functionCode": function_codes[tag.table]}

        slaves = [
            {
                "host": "127.0.0.1", "port": port, "type": "tcp", "method": "socket",
                "unitId": 1, "deviceName": name, "deviceType": "plc",
                "timeout": 5, "byteOrder": "BIG", "wordOrder": "BIG", "retries": 1,
                "retryOnEmpty": False, "retryOnInvalid": False,
                "pollPeriod": int(self.poll_interval_s * 1000),
                "connectAttemptTimeMs": 500, "connectAttemptCount": 5,
                "waitAfterFailedAttemptsMs": 1000,
                "attributes": [], "attributeUpdates": [], "rpc": [],
                "timeseries": [timeseries(tag) for tag in device_tags(self.tags)],
            }
            for name, port in zip(self.names(), ports, strict=True)
        ]
        return [Connector("modbus", "modbus", {"master": {"slaves": slaves}})]


@dataclass(frozen=True)
class OpcUaFleet:
    """`servers` OPC UA servers of `items` Double variables each, every variable changing every
    `period_s`, each subscribed to by the agent with that sampling interval.

    The agent's subscription publishes every `publishing_interval_s` with a queue of
    `queue_size` per item, enough to keep every change sampled in between (10 at 100 ms
    sampling and 1 s publishing)."""

    servers: int
    items: int
    period_s: float = 0.1
    publishing_interval_s: float = 1.0

    simulator = "opcua_farm.py"
    protocol = "OPC UA"

    def names(self) -> list[str]:
        return [f"opc-{index + 1:03d}" for index in range(self.servers)]

    def describe(self) -> str:
        return (f"{self.servers} OPC UA server{'s' if self.servers > 1 else ''} x {self.items} monitored items changing and "
                f"sampled every {self.period_s * 1000:g} ms (published every "
                f"{self.publishing_interval_s:g} s)")

    @property
    def samples_per_s(self) -> float:
        return self.servers * self.items / self.period_s

    @property
    def stamp_changes_per_s(self) -> float:
        return 0.0

    @property
    def queue_size(self) -> int:
        return max(1, math.ceil(self.publishing_interval_s / self.period_s))

    def simulator_args(self) -> list[str]:
        """Arguments of `bench/system/opcua_farm.py` for this fleet."""
        return ["--names", ",".join(self.names()), "--items", str(self.items),
                "--period-s", str(self.period_s)]

    def agent_devices(self, ports: list[int]) -> str:
        """The `devices:` entries (YAML) of the agent's configuration: every variable by
        NodeId (plc-sim's `ns=2;s=<server>.<item>`), subscribed."""
        entries = []
        for name, port in zip(self.names(), ports, strict=True):
            tags = "\n".join(
                f"      - {{name: {item_name(number)}, node: 'ns=2;s={name}.{item_name(number)}', "
                f"sampling_interval_s: {self.period_s}, queue_size: {self.queue_size}}}"
                for number in range(self.items)
            )
            entries.append(
                f"  - name: {name}\n"
                f"    protocol: opcua\n"
                f"    endpoint: opc.tcp://127.0.0.1:{port}/plc-sim/\n"
                f"    publishing_interval_s: {self.publishing_interval_s}\n"
                f"    tags:\n{tags}\n"
            )
        return "".join(entries)

    def thingsboard_connectors(self, ports: list[int]) -> list[Connector]:
        """ThingsBoard's OPC UA connectors, one per server (its connector takes one server):
        every variable as a timeseries of the server's object, by subscription, the
        publishing interval the agent's."""
        connectors = []
        for name, port in zip(self.names(), ports, strict=True):
            server = {
                "url": f"opc.tcp://127.0.0.1:{port}/plc-sim/", "timeoutInMillis": 5000,
                "scanPeriodInMillis": 3_600_000,
                "pollPeriodInMillis": int(self.publishing_interval_s * 1000),
                "enableSubscriptions": True, "subCheckPeriodInMillis": 100,
                "subDataMaxBatchSize": 1000, "subDataMinBatchCreationTimeMs": 200,
                "subscriptionProcessBatchSize": 2000, "sessionTimeoutInMillis": 120_000,
                "showMap": False, "security": "None", "identity": {"type": "anonymous"},
            }
            device = {
                "deviceNodeSource": "path", "deviceNodePattern": f"Root\\.Objects\\.{name}",
                "deviceInfo": {"deviceNameExpression": name,
                               "deviceNameExpressionSource": "constant",
                               "deviceProfileExpression": "default",
                               "deviceProfileExpressionSource": "constant"},
                "attributes": [], "rpc_methods": [], "attributes_updates": [],
                "timeseries": [{"key": item_name(n), "type": "path",
                                "value": "${" + item_name(n) + "}"} for n in range(self.items)],
            }
            connectors.append(Connector("opcua", name, {"server": server, "mapping": [device]}))
        return connectors


def item_name(number: int) -> str:
    """The name of an OPC UA server's variable `number` (from 0), and of the agent's tag."""
    return f"v{number + 1:03d}"


ServerKind = ModbusFleet | OpcUaFleet
"""Every kind of simulated server a workload may list."""


@dataclass(frozen=True)
class Workload:
    name: str
    servers: tuple[ServerKind, ...]

    def describe(self) -> str:
        return "; ".join(server.describe() for server in self.servers)

    @property
    def samples_per_s(self) -> float:
        return sum(server.samples_per_s for server in self.servers)


WORKLOADS = {
    "reference": Workload("reference", (ModbusFleet(devices=20, tags=50),
                                        OpcUaFleet(servers=2, items=200))),
    "heavy": Workload("heavy", (ModbusFleet(devices=200, tags=50),
                                OpcUaFleet(servers=20, items=200))),
    "smoke": Workload("smoke", (ModbusFleet(devices=2, tags=10, change_period_s=0.5),
                                OpcUaFleet(servers=1, items=10))),
}


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=2))
    return path
