"""What the system benchmark measures: a process tree from /proc, and the messages at the broker.

Only the measured process and its descendants are counted (never the simulators, the
broker or this script): CPU as `utime + stime` of `/proc/<pid>/stat`, memory as `VmRSS` and
`VmHWM` (the peak resident set) of `/proc/<pid>/status`, disk as `write_bytes` of
`/proc/<pid>/io` (what reached the block device, page cache write-back included).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import msgpack

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
STAMP_MODULUS = 2**32


@dataclass(frozen=True)
class ProcessSample:
    cpu_s: float
    rss_kb: int
    peak_rss_kb: int
    anon_kb: int
    """RssAnon: the private memory. The rest of RSS is file-backed (shared libraries: numba's
    LLVM alone maps ~60 MB), shared with other processes and given back under pressure."""
    write_bytes: int
    processes: int


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = task / "children"
        if children.exists():
            found += [int(child) for child in children.read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        try:
            todo += _children(current)
        except FileNotFoundError:
            continue
    return tree


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def sample_process(pid: int) -> ProcessSample:
    """The process and its descendants, summed (each one's own peak, for the peak)."""
    cpu = rss = peak = anon = written = 0.0
    pids = process_tree(pid)
    for member in pids:
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime
        rss += _status_kb(member, "VmRSS")
        peak += _status_kb(member, "VmHWM")
        anon += _status_kb(member, "RssAnon")
        io = dict(line.split(": ") for line in Path(f"/proc/{member}/io").read_text().splitlines())
        written += int(io["write_bytes"])
    return ProcessSample(cpu, int(rss), int(peak), int(anon), int(written), len(pids))


@dataclass(frozen=True)
class Arrival:
    t_ns: int
    topic: str
    payload: bytes


class BrokerRecorder:
    """Every message published to the broker (`#`), with the wall-clock time it arrived here.

    paho's network thread only appends; decoding happens after the run, so that the
    timestamps are not delayed by the work of decoding earlier messages.
    """

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)

        def on_connect(c: mqtt.Client, *_: object) -> None:
            c.subscribe("#", qos=1)

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            arrival = Arrival(time.time_ns(), msg.topic, msg.payload)
            with self._lock:
                self.arrivals.append(arrival)

        client.on_connect = on_connect
        client.on_subscribe = lambda *_: self._subscribed.set()
        client.on_message = on_message
        self._client = client
        self._address = (host, port)

    def __enter__(self) -> Self:
        self._client.connect(*self._address)
        self._client.loop_start()
        if not self._subscribed.wait(timeout=10):
            raise TimeoutError("no SUBACK from the broker")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def between(self, start_ns: int, end_ns: int,
                topic: Callable[[str], bool]) -> list[Arrival]:
        with self._lock:
            return [a for a in self.arrivals if start_ns <= a.t_ns < end_ns and topic(a.topic)]

    def matching(self, topic: Callable[[str], bool]) -> list[Arrival]:
        with self._lock:
            return [a for a in self.arrivals if topic(a.topic)]


@dataclass(frozen=True)
class StampSeen:
    """A message carrying a device's `stamp_ms`: the value, the time the message gives it
    (`read_ns`: the agent's poll time, ThingsBoard's conversion time) and its arrival."""

    device: str
    stamp_ms: int
    read_ns: int
    arrival_ns: int


def agent_stamps(arrival: Arrival) -> list[StampSeen]:
    """The `change` events of `stamp_ms` in an agent message (docs/events.md)."""
    if not arrival.topic.endswith("/change"):
        return []
    event = msgpack.unpackb(arrival.payload)
    tag = event["data"]["tags"].get("stamp_ms")
    if tag is None:
        return []
    return [StampSeen(event["dev"], int(tag["value"]), event["t"], arrival.t_ns)]


def agent_device(arrival: Arrival) -> str | None:
    """The device a `window` or `change` event of the agent is about, else None."""
    if not arrival.topic.endswith(("/window", "/change")):
        return None
    device = msgpack.unpackb(arrival.payload).get("dev")
    return None if device is None else str(device)


@dataclass(frozen=True)
class WindowSeen:
    """A `window` event of the agent: its device, its samples (good and bad, every tag) and
    the time the window closed."""

    device: str
    samples: int
    end_ns: int
    arrival_ns: int


def agent_windows(arrival: Arrival) -> list[WindowSeen]:
    if not arrival.topic.endswith("/window"):
        return []
    event = msgpack.unpackb(arrival.payload)
    samples = sum(int(tag.get("n", 0)) + int(tag.get("bad", 0))
                  for tag in event["data"]["tags"].values())
    return [WindowSeen(event["dev"], samples, int(event["data"]["end_ns"]), arrival.t_ns)]


def ingested_per_s(windows: list[WindowSeen], devices: list[str], start_ns: int,
                   end_ns: int) -> float | None:
    """Samples per second the agent aggregated for `devices`, from its `window` events that
    arrived in [start, end): per device, the samples of every window but its first there,
    over the time between the first window's close and the last's (each window holds the
    samples since the previous one closed, so this neither counts a window twice nor
    needs its opening time). None when a device sent fewer than two windows in the span."""
    total = 0.0
    for device in devices:
        mine = sorted((w for w in windows
                       if w.device == device and start_ns <= w.arrival_ns < end_ns),
                      key=lambda w: w.end_ns)
        if len(mine) < 2:
            return None
        total += sum(w.samples for w in mine[1:]) / ((mine[-1].end_ns - mine[0].end_ns) / 1e9)
    return total


def thingsboard_stamps(arrival: Arrival) -> list[StampSeen]:
    """`stamp_ms` in a ThingsBoard gateway telemetry message
    (`{"device": [{"ts": ms, "values": {...}}]}` on `v1/gateway/telemetry`)."""
    if arrival.topic != "v1/gateway/telemetry":
        return []
    seen = []
    for device, entries in json.loads(arrival.payload).items():
        for entry in entries:
            value = entry.get("values", {}).get("stamp_ms")
            if value is not None:
                seen.append(StampSeen(device, int(value), int(entry["ts"]) * 1_000_000,
                                      arrival.t_ns))
    return seen


def thingsboard_values(arrival: Arrival) -> list[tuple[str, int]]:
    """(device, values) of each entry of a ThingsBoard gateway telemetry message."""
    if arrival.topic != "v1/gateway/telemetry":
        return []
    return [(device, len(entry.get("values", {})))
            for device, entries in json.loads(arrival.payload).items() for entry in entries]


def change_time_ns(stamp_ms: int, arrival_ns: int) -> int:
    """The wall-clock time a stamp was set: the latest time before arrival with that value
    of milliseconds modulo 2**32 (which wraps every 49.7 days)."""
    arrival_ms = arrival_ns // 1_000_000
    return (arrival_ms - (arrival_ms - stamp_ms) % STAMP_MODULUS) * 1_000_000


@dataclass(frozen=True)
class Latencies:
    change_to_broker_ms: list[float]
    timestamp_to_broker_ms: list[float]


def latencies(seen: list[StampSeen], start_ns: int, end_ns: int) -> Latencies:
    """For each stamp value whose first arrival at the broker is within [start, end): change
    to arrival, and the message's own timestamp to arrival. Counting arrivals rather than
    changes made in the span shows a system that lags behind: what it sends late counts."""
    first: dict[tuple[str, int], StampSeen] = {}
    for item in sorted(seen, key=lambda s: s.arrival_ns):
        first.setdefault((item.device, item.stamp_ms), item)
    arrived = [item for item in first.values() if start_ns <= item.arrival_ns < end_ns]
    return Latencies(
        [(item.arrival_ns - change_time_ns(item.stamp_ms, item.arrival_ns)) / 1e6
         for item in arrived],
        [(item.arrival_ns - item.read_ns) / 1e6 for item in arrived],
    )


def percentile(values: list[float], share: float) -> float | None:
    """Percentile interpolated between ranks (`share` 0.5 for p50, 0.99 for p99); None if empty."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]
