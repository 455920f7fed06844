"""The system benchmark's report: markdown tables from what `run.py` measured.

One table per workload, a row per measure, a column per system and the ratio of the two
(ThingsBoard's number over the agent's); bench/README.md says what each row means.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import measure
import thingsboard
from measure import Arrival, Latencies, ProcessSample
from workload import Workload

from agent.testing import describe_machine

ROOT = Path(__file__).resolve().parents[2]
BUDGET_CPU_PERCENT, BUDGET_RSS_MB = 5.0, 150.0
"""Issue 8's budget for the reference workload on this machine."""


@dataclass
class SystemResult:
    name: str
    reads: frozenset[str] = frozenset()
    """The protocols the system reads (ThingsBoard: Modbus TCP only)."""
    seconds: float = 0.0
    served: dict[str, float] = field(default_factory=dict)
    """Per protocol, over the span: Modbus values the simulators answered, OPC UA value
    changes the simulators made (whoever reads them)."""
    opcua_ingested_per_s: float | None = None
    """OPC UA samples the agent aggregated per second (its `window` events' `n` + `bad`)."""
    start_ns: int = 0
    end_ns: int = 0
    before: ProcessSample | None = None
    after: ProcessSample | None = None
    messages: list[Arrival] = field(default_factory=list)
    latency: Latencies = field(default_factory=lambda: Latencies([], []))
    note: str = ""

    @property
    def samples(self) -> float:
        """The values the system read over the span: Modbus values served to it, and the OPC
        UA samples it ingested."""
        total = self.served.get("Modbus TCP", 0.0) if "Modbus TCP" in self.reads else 0.0
        if "OPC UA" in self.reads and self.opcua_ingested_per_s is not None:
            total += self.opcua_ingested_per_s * self.seconds
        return total

    @property
    def cpu_s(self) -> float:
        assert self.before and self.after
        return self.after.cpu_s - self.before.cpu_s

    @property
    def disk_bytes(self) -> int:
        assert self.before and self.after
        return self.after.write_bytes - self.before.write_bytes


@dataclass(frozen=True)
class OutageResult:
    """The agent with its broker unreachable: what its store wrote over the span."""

    seconds: float
    disk_bytes: int
    """`write_bytes` of the agent's process."""
    stored_bytes: int
    """Payload bytes of the events its store committed (`buffer stats` bytes, end - start)."""
    stored_events: int


@dataclass(frozen=True)
class PlainBroker:
    seconds: float
    published: Counter[str]


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def number(value: float) -> str:
    return f"{value:,.0f}"


def ms_pair(values: list[float], out_of: str = "") -> str:
    p50, p99 = measure.percentile(values, 0.5), measure.percentile(values, 0.99)
    if p50 is None or p99 is None:
        return f"n/a (n=0{out_of})"
    return f"{p50:,.0f} / {p99:,.0f} (n={len(values):,}{out_of})"


def ratio(other: float | None, agent: float | None) -> str:
    if other is None or agent is None or agent == 0:
        return "n/a"
    value = other / agent
    return f"{value:.2f}" if value < 1 else f"{value:.1f}"


def protocol_rows(result: SystemResult,
                  workload: Workload) -> list[tuple[str, str, float | None]]:
    """What was read per protocol of the workload."""
    span = result.seconds
    found: list[tuple[str, str, float | None]] = []
    for protocol in dict.fromkeys(server.protocol for server in workload.servers):
        offered = sum(s.samples_per_s for s in workload.servers if s.protocol == protocol)
        served = result.served.get(protocol, 0.0) / span
        read = protocol in result.reads
        if protocol == "OPC UA":
            name = f"OPC UA value changes made by the simulators/s (workload: {number(offered)})"
            found.append((name, number(served), None))
            ingested = result.opcua_ingested_per_s if read else None
            found.append((("OPC UA samples ingested/s (agent: `window` events' `n`; "
                           "ThingsBoard: values in its telemetry)"),
                          number(ingested) if ingested is not None
                          else ("n/a" if read else "not read"), ingested))
        else:
            found.append((f"{protocol} samples read/s (workload: {number(offered)})",
                          number(served) if read else "not read", served if read else None))
    return found


def rows(result: SystemResult, workload: Workload) -> list[tuple[str, str, float | None]]:
    """(measure, shown value, number for the ratio) for one system."""
    changes_made = sum(server.stamp_changes_per_s for server in workload.servers) * result.seconds
    assert result.before and result.after
    span = result.seconds
    samples = result.samples
    payload = sum(len(a.payload) for a in result.messages)
    cpu_per_k = result.cpu_s / samples * 1000 if samples else None
    return [
        *protocol_rows(result, workload),
        ("samples read/s, every protocol", number(samples / span), samples / span),
        ("CPU s per 1,000 samples",
         "n/a" if cpu_per_k is None else f"{cpu_per_k:.4f}", cpu_per_k),
        ("CPU, % of one core", f"{100 * result.cpu_s / span:.1f}", result.cpu_s / span),
        ("peak RSS, MiB (VmHWM)", mib(result.after.peak_rss_kb), result.after.peak_rss_kb),
        ("RSS at the end of the span, MiB", mib(result.after.rss_kb), result.after.rss_kb),
        ("of which private (RssAnon), MiB", mib(result.after.anon_kb), result.after.anon_kb),
        ("processes measured", str(result.after.processes), None),
        ("MQTT messages sent (per s)",
         f"{len(result.messages):,} ({len(result.messages) / span:,.1f})", len(result.messages)),
        ("MQTT payload bytes sent (per s)", f"{payload:,} ({payload / span:,.0f})", payload),
        ("bytes written to disk, `write_bytes` (per s)",
         f"{result.disk_bytes:,} ({result.disk_bytes / span:,.0f})", result.disk_bytes or None),
        ("value change -> broker, p50 / p99 ms",
         ms_pair(result.latency.change_to_broker_ms, f", about {changes_made:,.0f} changes made"),
         measure.percentile(result.latency.change_to_broker_ms, 0.5)),
        ("message's own timestamp -> broker, p50 / p99 ms",
         ms_pair(result.latency.timestamp_to_broker_ms),
         measure.percentile(result.latency.timestamp_to_broker_ms, 0.5)),
    ]


def workload_section(workload: Workload, agent: SystemResult, other: SystemResult | None,
                     tb_version: str, outage: OutageResult) -> list[str]:
    agent_rows = rows(agent, workload)
    header = f"## {workload.name}: {workload.describe()}"
    kinds = Counter(a.topic.rsplit("/", 1)[-1] for a in agent.messages)
    lines = [header, ""]
    if other is None:
        lines += ["| measure | edge-agent |", "|---|---:|",
                  *(f"| {name} | {shown} |" for name, shown, _ in agent_rows)]
    else:
        other_rows = rows(other, workload)
        lines += [(f"| measure | edge-agent | ThingsBoard IoT Gateway {tb_version} | ratio "
                  "(ThingsBoard / agent) |"), "|---|---:|---:|---:|"]
        for (name, shown, value), (_, other_shown, other_value) in zip(
                agent_rows, other_rows, strict=True):
            lines.append(f"| {name} | {shown} | {other_shown} | {ratio(other_value, value)} |")
    lines += ["", "edge-agent messages by kind: "
              + ", ".join(f"{kind} {count:,}" for kind, count in sorted(kinds.items())) + "."]
    if any(server.protocol == "OPC UA" for server in workload.servers):
        thingsboard_note = ("ThingsBoard reads the OPC UA servers too, with its OPC UA "
                            "connector (one per server, by subscription, every variable a "
                            "timeseries; it sends each value it gets, the agent condenses "
                            "them into windows). ")
        lines += ["", ((thingsboard_note if other is not None else "") + "The change latency is the "
                  "Modbus devices' (`stamp_ms`, `report_on_change`): OPC UA tags have no "
                  "`report_on_change`, the agent sends them in `window` events only. An OPC "
                  "UA change made is not a change delivered: the agent samples every 100 ms "
                  "with a queue of 10 per item and its subscription publishes every second; "
                  "the ingested row counts what reached its windows.")]
    lines += ["", *outage_table(outage)]
    if workload.name == "reference":
        cpu_percent = 100 * agent.cpu_s / agent.seconds
        assert agent.after
        rss_mb = agent.after.peak_rss_kb * 1024 / 1e6
        lines += ["", (f"Budget (issue 8, this machine): at most {BUDGET_CPU_PERCENT:g} % of one "
                  f"core and {BUDGET_RSS_MB:g} MB RSS. Measured: {cpu_percent:.1f} % "
                  f"({'within' if cpu_percent <= BUDGET_CPU_PERCENT else 'OVER'}), "
                  f"{rss_mb:.0f} MB peak ({'within' if rss_mb <= BUDGET_RSS_MB else 'OVER'}).")]
    return lines + [""]


def outage_table(outage: OutageResult) -> list[str]:
    span = outage.seconds
    written = (f"{outage.disk_bytes / outage.stored_bytes:.2f}" if outage.stored_bytes
               else "n/a")
    return [
        (f"edge-agent with its broker unreachable (nothing listening at its address), "
         f"{span:.0f} s, the same devices (ThingsBoard, with its memory storage, writes "
         "nothing and keeps nothing through a power cut):"),
        "",
        "| measure | edge-agent |", "|---|---:|",
        f"| events stored (per s) | {outage.stored_events:,} ({outage.stored_events / span:,.1f}) |",
        (f"| payload bytes stored (per s) | {outage.stored_bytes:,} "
         f"({outage.stored_bytes / span:,.0f}) |"),
        (f"| bytes written to disk, `write_bytes` (per s) | {outage.disk_bytes:,} "
         f"({outage.disk_bytes / span:,.0f}) |"),
        f"| bytes written per payload byte stored | {written} |",
    ]


def plain_broker_section(plain: PlainBroker) -> list[str]:
    published = ", ".join(f"`{topic}` x{count}" for topic, count in sorted(plain.published.items()))
    telemetry = plain.published.get("v1/gateway/telemetry", 0)
    return [
        "## ThingsBoard IoT Gateway against a plain Mosquitto",
        "",
        (f"Started against the same Mosquitto with nobody answering for {plain.seconds:g} s, it "
        f"published: {published or 'nothing'} ({telemetry} telemetry messages). After "
        "connecting, its MQTT client (tb-mqtt-client's `TBDeviceMqttClient`) sends the RPC "
        "`getSessionLimits` to `v1/devices/me/rpc/request/1` and counts itself connected "
        "(`TBClient.is_connected()` is `__is_connected and client.rate_limits_received`) only "
        "once ThingsBoard has answered on `v1/devices/me/rpc/response/1`; until then it polls "
        "the devices and publishes nothing. For the side-by-side run the benchmark answers "
        "that one RPC (`thingsboard.SessionLimitsResponder`, in the benchmark's process, not "
        f"measured) with no rate limits: `{json.dumps(thingsboard.SESSION_LIMITS)}`. Nothing "
        "else of a ThingsBoard server is needed: its telemetry, connect and attribute "
        "messages are plain publishes."),
        "",
    ]


MEMORY_BASELINES = (
    ("`python -c pass`", "pass"),
    ("`import numpy`", "import numpy"),
    ("`import numba`", "import numba"),
    ("`import agent.supervisor.runtime, agent.detect` (what `edge-agent run` imports)",
     "import agent.supervisor.runtime, agent.detect"),
)


def memory_baselines() -> list[tuple[str, int]]:
    """Peak RSS (kB) of a fresh interpreter that only imports, for scale."""
    probe = "; import re; print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])"
    return [(name, int(subprocess.run([sys.executable, "-c", code + probe], capture_output=True,
                                      text=True, check=True).stdout))
            for name, code in MEMORY_BASELINES]


def memory_section(memory: list[tuple[str, int]]) -> list[str]:
    return ["## Baselines: peak RSS of an interpreter that only imports", "",
            "| process | peak RSS, MiB (VmHWM) |", "|---|---:|",
            *(f"| {name} | {mib(kb)} |" for name, kb in memory), ""]


def machine_line() -> str:
    return f"Machine: {describe_machine()}."


def git_head() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())
