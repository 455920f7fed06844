"""What the end-to-end tests share: configurations, simulators, the agent as a process with its
log, and a subscriber that keeps every message as it arrived.

The tests import this module by name (pytest puts `tests/e2e` on the path, there being no
package here).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import msgpack
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.testing import MqttCollector, console_script, start_plc_sim, stop_process, wait_until
from plc_sim.trace import FaultPeriod, fault_periods

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-never-logged"


@dataclass
class Sim:
    port: int
    """Its Modbus TCP port (0 for a simulator started for its OPC UA side only)."""
    trace: Path
    endpoint: str = ""
    """Its OPC UA endpoint, when it serves OPC UA."""

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.trace.read_text().splitlines() if line.strip()]

    def fault_periods(self) -> list[FaultPeriod]:
        """Ground truth of a fault scenario (`plc-sim --scenario bearing-wear ...`)."""
        return fault_periods(self.rows())


@contextlib.contextmanager
def running_sim(directory: Path, name: str, *args: str) -> Iterator[Sim]:
    """`plc-sim` (compressor, 4x speed) with its trace and log under `directory/name.*`."""
    trace = directory / f"{name}.trace.jsonl"
    with open(directory / f"{name}.log", "w") as log:
        process, info = start_plc_sim("--scenario", "compressor", "--speed", "4",
                                      "--trace", str(trace), *args, stderr=log)
        try:
            yield Sim(port=int(info["port"]), trace=trace)
        finally:
            assert stop_process(process) == 0


COMPRESSOR_TAGS = """    tags:
      - {name: motor_current_a, table: input, address: 0, type: float32, unit: A}
      - {name: active_power_w, table: input, address: 2, type: float32, unit: W}
      - {name: energy_kwh, table: input, address: 4, type: uint32, scale: 0.001, unit: kWh}
      - {name: discharge_pressure_bar, table: input, address: 6, type: int16, scale: 0.01, unit: bar}
      - {name: discharge_temp_c, table: input, address: 7, type: int16, scale: 0.1, unit: °C}
      - {name: machine_state, table: input, address: 8, type: uint16}
      - name: operating_hours
        table: holding
        address: 100
        type: uint32
        byte_order: CDAB
        scale: 0.0002777777777777778
        unit: h
"""
"""The simulated compressor's register map as the end-to-end tests read it (their `TAGS`)."""


def build_deb(out: Path, arch: str, *, compression: str = "none",
              timeout_s: float = 400) -> Path:
    """`make deb` into `out`, for `arch`: this machine's, or another one built in an emulated
    root (`ARCH=`, packaging/build-deb-emulated.sh). Uncompressed: what is tested is the
    package's content; dpkg-deb's gzip alone took 38 of the 70 s of a build here."""
    return DebBuild(out, arch, compression=compression).result(timeout_s)


class DebBuild:
    """`make deb` for `arch` into `out`, running from now on in a process of its own (at a
    lower priority with `nice`, for one started while other tests run); `result` waits."""

    def __init__(self, out: Path, arch: str, *, compression: str = "none",
                 nice: int = 0) -> None:
        self.out, self.arch = out, arch
        self._log = out / f"make-deb-{arch}.log"
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen(
                ["nice", "-n", str(nice), "make", "-s", "deb", f"DEB_DIR={out}",
                 f"DEB_COMPRESSION={compression}", f"ARCH={arch}"],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)

    def result(self, timeout_s: float) -> Path:
        """The package, once built (the build is stopped if it takes over `timeout_s`)."""
        import tomllib

        try:
            code = self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            raise
        assert code == 0, (f"make deb ARCH={self.arch} failed:\n"
                           f"{self._log.read_text(errors='replace')[-4000:]}")
        version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        deb = self.out / f"edge-agent_{version}_{self.arch}.deb"
        assert deb.is_file(), sorted(p.name for p in self.out.iterdir())
        return deb

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


BACKGROUND_DEBS: dict[str, DebBuild] = {}
"""Packages started before the tests that need them (tests/e2e/conftest.py), by architecture."""


def numba_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One kernel cache per test session, shared by every e2e module (so one compilation)."""
    path = tmp_path_factory.getbasetemp() / "numba-cache"
    path.mkdir(exist_ok=True)
    return path


def agent_config(
    tmp_path: Path, broker: Any, devices: str, window_s: float = 1.0, *,
    commit_interval_s: float = 0.1, max_inflight: int | None = None,
    max_bytes: str | None = None,
) -> Path:
    """A configuration beside `tmp_path/state`, the compressor's tags on each device (`TAGS`).
    With the link down the store commits every 0.5 s here (20 s by default): the tests that
    hold the broker away see their events stored at the pace they were written for."""
    inflight = f", max_inflight: {max_inflight}" if max_inflight is not None else ""
    bound = f', max_bytes: "{max_bytes}"' if max_bytes is not None else ""
    text = f"""
gateway: {{id: gw-e2e, site: lab, state_dir: {tmp_path / "state"}}}
mqtt: {{host: 127.0.0.1, port: {broker.port}, tls: {{enabled: false}},
       username: e2e, password: "${{E2E_MQTT_PASSWORD}}"{inflight}}}
store: {{commit_interval_s: {commit_interval_s}, outage_commit_interval_s: 0.5{bound}}}
aggregate: {{window_s: {window_s}}}
devices:
{devices.replace("TAGS", demo_tags())}"""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def demo_tags() -> str:
    """The `tags:` block of plc-sim's compressor (`COMPRESSOR_TAGS`), as YAML text indented
    for a device of a `devices:` list."""
    return COMPRESSOR_TAGS


def warm_kernel_cache(numba_cache: Path) -> None:
    """Compile the detector kernels into the session's cache first, so the agent's start
    takes seconds and the simulators' onsets, fixed at their start, come after its warm-up."""
    import sys

    subprocess.run([sys.executable, "-c",
                    "from agent.detect.kernels import warm_up; warm_up()"],
                   env={"NUMBA_CACHE_DIR": str(numba_cache), "PATH": "/usr/bin:/bin"},
                   check=True, timeout=600, cwd=ROOT)


def saved_rows(state_file: Path) -> dict[str, Any]:
    """The rows of a device's learned-state file (`<state_dir>/detectors/<device>.json`), by
    row key; {} while it is missing or half written."""
    try:
        data: dict[str, Any] = json.loads(state_file.read_text())["data"]
    except (FileNotFoundError, ValueError):
        return {}
    return data


def saved_row(state_file: Path, prefix: str) -> Any:
    """The first saved row whose key starts with `prefix` (`pca|load|`), or None."""
    return next((v for k, v in saved_rows(state_file).items() if k.startswith(prefix)), None)


def scaled(node: Any, factor: float) -> Any:
    """`node` with every `..._s` number divided by `factor` (but the devices' timeout): a
    configuration of machine times for a simulator that runs `factor` times faster."""
    if isinstance(node, dict):
        return {k: (v / factor if k.endswith("_s") and k != "timeout_s"
                    and isinstance(v, int | float) else scaled(v, factor))
                for k, v in node.items()}
    if isinstance(node, list):
        return [scaled(v, factor) for v in node]
    return node


def scaled_config(directory: Path, broker: Any, speed: float, gateway: str = "gw-e2e",
                  **sections: Any) -> Path:
    """`directory/config.yaml` for simulators `speed` times faster than their machines: the
    `sections` (aggregate, devices, detectors, machines) in machine times, every `_s` of
    them divided by `speed` (`scaled`), beside the broker and a state directory in
    `directory`."""
    config = {
        "gateway": {"id": gateway, "site": "lab", "state_dir": str(directory / "state"),
                    "clock": "rtc"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "tls": {"enabled": False}},
        "store": {"commit_interval_s": 0.1},
        **{name: scaled(section, speed) for name, section in sections.items()},
    }
    path = directory / "config.yaml"
    path.write_text(json.dumps(config, indent=1, ensure_ascii=False))
    return path


def modbus_device(name: str, port: int, poll_interval_s: float = 0.2) -> str:
    return f"""  - name: {name}
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {port}
    timeout_s: 0.5
    poll_interval_s: {poll_interval_s}
TAGS"""


def agent_env(numba_cache: Path) -> dict[str, str]:
    """The agent's whole environment; PYTHONPATH passed on when the tests run with one, so
    that the agent runs the checkout under test even where the venv's editable install
    points at another checkout (a venv shared between git worktrees)."""
    env = {"NUMBA_CACHE_DIR": str(numba_cache), "PATH": "/usr/bin:/bin",
           "E2E_MQTT_PASSWORD": SECRET}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def log_time_ns(line: dict[str, Any]) -> int:
    """The UTC nanoseconds of a JSON log line's ISO `timestamp` (microsecond precision)."""
    stamp = line["timestamp"].replace("Z", "+00:00")
    from datetime import datetime

    moment = datetime.fromisoformat(stamp)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


class AgentProcess:
    """`edge-agent run -c CONFIG`, its JSON log lines in `log_path` (stderr is line-buffered,
    so every line logged before a SIGKILL is in the file)."""

    def __init__(
        self, config: Path, log_path: Path, numba_cache: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [console_script("edge-agent"), "run", "-c", str(config)],
                stderr=log, stdout=subprocess.DEVNULL, text=True,
                env={**agent_env(numba_cache), **(extra_env or {})},
            )

    def log(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(raw)
                if isinstance(entry, dict):
                    lines.append(entry)
        return lines

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.log() if line.get("event") == event]

    def wait_logged(self, event: str, *, count: int = 1, timeout_s: float = 30.0) -> dict[str, Any]:
        """The `count`-th log line of `event`; fails early if the agent exits first."""

        def found() -> dict[str, Any] | None:
            lines = self.logged(event)
            if len(lines) >= count:
                return lines[count - 1]
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the agent exited with {self.process.returncode} before logging {event!r}:\n"
                    + self.log_path.read_text()[-3000:]
                )
            return None

        line = wait_until(found, timeout_s=timeout_s, what=f"{event!r} in {self.log_path}")
        assert line is not None
        return line

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def terminate(self, timeout_s: float = 10.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # Where is it stuck? The agent dumps every thread's stack on SIGUSR1.
            self.process.send_signal(signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=1)
            raise AssertionError(
                f"the agent did not stop within {timeout_s} s of SIGTERM:\n"
                + self.log_path.read_text()[-6000:]
            ) from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        stop_process(self.process)


@dataclass(frozen=True)
class Received:
    """One message as the subscriber got it: the raw payload and its msgpack map."""

    topic: str
    payload: bytes
    fields: Any
    """The decoded msgpack (a map for an event)."""
    arrived_ns: int

    @property
    def seq(self) -> int:
        return int(self.fields["seq"])

    @property
    def key(self) -> str | int:
        """What makes an event unique: its `id` once the envelope has one, else its `seq`."""
        event_id = self.fields.get("id")
        return str(event_id) if event_id is not None else self.seq

    @property
    def hist(self) -> bool:
        """Replayed from a backlog after an outage (`hist: true`; absent means live)."""
        return bool(self.fields.get("hist", False))

    @property
    def kind(self) -> str:
        return str(self.fields["kind"])

    @property
    def device(self) -> str:
        return str(self.fields["dev"])

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.fields["data"]
        return data

    @classmethod
    def of(cls, msg: mqtt.MQTTMessage) -> Received:
        try:
            fields = msgpack.unpackb(msg.payload, raw=False)
        except ValueError:
            fields = None
        return cls(msg.topic, bytes(msg.payload), fields, time.time_ns())

    def content(self) -> dict[str, Any]:
        """The event without what may legitimately differ between two sends of it."""
        return {k: v for k, v in self.fields.items() if k != "hist"}


class RawCollector(MqttCollector[Received]):
    """A persistent-session QoS 1 subscriber that keeps the raw payload and every envelope
    key of each event, so tests can look at fields beyond `agent.events.Envelope`."""

    def __init__(self, host: str, port: int, topic: str, client_id: str = "cloud") -> None:
        super().__init__(host, port, topic, client_id=client_id, record=Received.of)


SENTINEL_DEVICE = "_end-of-test"


def publish_sentinel(host: str, port: int, topic: str) -> None:
    """Publish one marker event at QoS 1 from another client and wait for its PUBACK.

    Mosquitto queues messages to a subscriber in the order it accepted them, so once the
    subscriber has the marker it has everything the broker acknowledged to the agent before.
    """
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=f"sentinel-{os.getpid()}")
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        marker = msgpack.packb({"v": 1, "gw": "test", "seq": 0, "kind": "end",
                                "dev": SENTINEL_DEVICE, "t": time.time_ns(), "data": {}})
        client.publish(topic, marker, qos=1).wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def is_sentinel(message: Received) -> bool:
    return message.device == SENTINEL_DEVICE


def stop_and_collect(agent: AgentProcess, broker: Any, collector: RawCollector,
                     sentinel_topic: str) -> list[Received]:
    """SIGTERM, exit 0, and everything the agent sent, up to a sentinel published after it."""
    assert agent.terminate() == 0
    publish_sentinel(broker.host, broker.port, sentinel_topic)
    got = collector.wait_for(lambda ms: any(is_sentinel(m) for m in ms), timeout_s=30,
                             what="the sentinel")
    return [m for m in got if not is_sentinel(m)]
