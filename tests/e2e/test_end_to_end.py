"""The agent as a user starts it: plc-sim, Mosquitto, `edge-agent run` and `edge-agent tail`
as real processes over real sockets."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, SECRET, Sim, agent_config, agent_env, modbus_device

from agent.testing import (
    Mosquitto,
    console_script,
    free_tcp_port,
    start_plc_sim,
    stop_process,
)

pytestmark = pytest.mark.e2e

# How each configured tag is computed from the simulator's trace line (firmware-sim/README.md).
SERVED: dict[str, Any] = {
    "motor_current_a": lambda r: r["motor_current_a"],
    "active_power_w": lambda r: r["active_power_w"],
    "energy_kwh": lambda r: r["energy_wh"] * 0.001,
    "discharge_pressure_bar": lambda r: r["discharge_pressure_bar"],
    "discharge_temp_c": lambda r: r["discharge_temp_c"],
    "machine_state": lambda r: r["state"],
    "operating_hours": lambda r: r["operating_s"] * 0.0002777777777777778,
}


@pytest.fixture
def plc_sim(tmp_path: Path) -> Iterator[Sim]:
    trace = tmp_path / "trace.jsonl"
    with open(tmp_path / "plc-sim.log", "w") as log:
        process, info = start_plc_sim("--scenario", "compressor", "--speed", "4",
                                      "--trace", str(trace), stderr=log)
        yield Sim(port=int(info["port"]), trace=trace)
        assert stop_process(process) == 0


class Tail:
    """`edge-agent tail --json` as a process, its events read by a thread into a queue."""

    def __init__(self, broker: Mosquitto) -> None:
        self.process = subprocess.Popen(
            [console_script("edge-agent"), "tail", "--host", broker.host, "--port",
             str(broker.port), "--no-tls", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.received: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        assert self.process.stderr is not None
        said = [self.process.stderr.readline()]  # until SUBACK (or the process dies)
        while said[-1] and not said[-1].startswith("subscribed to"):
            said.append(self.process.stderr.readline())
        assert said[0].startswith("connecting to") and said[-1].startswith("subscribed to"), said
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            record = json.loads(line)
            if record["kind"] == "status":  # the gateway's retained online/offline
                self.statuses.append(record)
            else:
                self.events.put(record)

    def until(self, predicate: Any, timeout_s: float, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.received):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for {what}; got {self.received}")
            try:
                self.received.append(self.events.get(timeout=remaining))
            except queue.Empty:
                continue
        return self.received


def windows(events: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "window" and e["dev"] == device]


@contextlib.contextmanager
def running_agent(
    config: Path, broker: Mosquitto, numba_cache: Path
) -> Iterator[tuple[subprocess.Popen[str], Tail]]:
    """`edge-agent tail` (subscribed first), then `edge-agent run`; both stopped on the way out.

    The agent's log goes to `agent.log` beside the configuration.
    """
    tail = Tail(broker)
    env = agent_env(numba_cache)
    with open(config.parent / "agent.log", "w") as log:
        agent = subprocess.Popen(
            [console_script("edge-agent"), "run", "-c", str(config)],
            stderr=log, text=True, env=env,
        )
        try:
            yield agent, tail
        finally:
            stop_process(agent)
            stop_process(tail.process)


def test_events_carry_the_values_the_simulator_served(
    tmp_path: Path, mosquitto: Mosquitto, plc_sim: Sim, numba_cache: Path
) -> None:
    config = agent_config(tmp_path, mosquitto, modbus_device("compressor-1", plc_sim.port))
    with running_agent(config, mosquitto, numba_cache) as (agent, tail):
        received = tail.until(lambda ev: len(windows(ev, "compressor-1")) >= 3, 60,
                              "three windows")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0

    assert [e["seq"] for e in received] == list(range(1, len(received) + 1)), "no gap, no duplicate"
    health = [e for e in received if e["kind"] == "device_health"]
    assert health[0]["data"]["status"] == "up" and health[0]["dev"] == "compressor-1"
    assert all(e["topic"] == f"lab/gw-e2e/{e['dev']}/{e['kind']}" for e in received)

    assert SECRET not in (tmp_path / "agent.log").read_text(), "a secret reached the log"
    assert [s["status"] for s in tail.statuses][:1] == ["online"], "birth message first"

    trace = plc_sim.rows()
    for window in windows(received, "compressor-1"):
        stats = window["data"]["tags"]
        assert set(stats) == set(SERVED), "every configured tag is in every window"
        for tag, served_value in SERVED.items():
            s = stats[tag]
            assert s["n"] > 0 and s["bad"] == 0
            served = [served_value(r) for r in trace if r["time_ns"] <= window["data"]["end_ns"]]
            for field in ("min", "max", "last"):
                assert any(v == pytest.approx(s[field], rel=1e-9, abs=1e-12) for v in served), (
                    f"{tag} {field}={s[field]} was never served by the simulator"
                )
            assert s["min"] <= s["mean"] <= s["max"]


def test_sigterm_sends_the_open_window_and_exits_0_within_5_s(
    tmp_path: Path, mosquitto: Mosquitto, plc_sim: Sim, numba_cache: Path
) -> None:
    config = agent_config(tmp_path, mosquitto, modbus_device("compressor-1", plc_sim.port),
                          window_s=3600)
    with running_agent(config, mosquitto, numba_cache) as (agent, tail):
        # "up" is reported after the first good read: that sample is in the open window.
        tail.until(lambda ev: any(e["kind"] == "device_health" for e in ev), 60, "device up")
        stopped_at = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0
        assert time.monotonic() - stopped_at < 5.0, "SIGTERM must stop the agent within 5 s"
        received = tail.until(lambda ev: windows(ev, "compressor-1"), 10, "the open window")
    [window] = windows(received, "compressor-1")
    assert window["data"]["tags"]["active_power_w"]["n"] >= 1
    assert '"agent_stopped"' in (tmp_path / "agent.log").read_text()


def test_dead_device_is_reported_and_does_not_stop_the_others(
    tmp_path: Path, mosquitto: Mosquitto, plc_sim: Sim, numba_cache: Path
) -> None:
    nobody_listens = free_tcp_port()
    devices = modbus_device("compressor-1", plc_sim.port) + "\n" + modbus_device(
        "dead-meter", nobody_listens)
    config = agent_config(tmp_path, mosquitto, devices)
    with running_agent(config, mosquitto, numba_cache) as (agent, tail):
        received = tail.until(lambda ev: len(windows(ev, "compressor-1")) >= 3, 60,
                              "windows of the live device")
        agent.send_signal(signal.SIGINT)
        assert agent.wait(timeout=10) == 0
    dead = [e for e in received if e["dev"] == "dead-meter"]
    assert [e["kind"] for e in dead] == ["device_health"], "reported once, not every retry"
    assert dead[0]["data"]["status"] == "down" and dead[0]["data"]["reason"] == "unreachable"
    assert str(nobody_listens) in dead[0]["data"]["detail"]
    log = (tmp_path / "agent.log").read_text()
    assert log.count('"device_down"') == 1


def test_check_command_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run([console_script("edge-agent"), "check", "-c",
                         str(ROOT / "config" / "example.yaml")], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "config.yaml"
    text = (ROOT / "config" / "example.yaml").read_text().replace(
        "type: float32\n        unit: W", "type: flaot32\n        unit: W")
    broken.write_text(text)
    line = text[: text.index("flaot32")].count("\n") + 1
    bad = subprocess.run([console_script("edge-agent"), "check", "-c", str(broken)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert f"{broken}:{line}: devices[0].tags[1].type: 'flaot32' is not one of bool, int16" in bad.stderr


def test_unusable_state_dir_is_a_clear_error(tmp_path: Path, mosquitto: Mosquitto) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    config = agent_config(tmp_path, mosquitto, modbus_device("m1", free_tcp_port()))
    config.write_text(config.read_text().replace(str(tmp_path / "state"), str(not_a_dir / "state")))
    run = subprocess.run([console_script("edge-agent"), "run", "-c", str(config)],
                         capture_output=True, text=True, check=False, timeout=60,
                         env={"E2E_MQTT_PASSWORD": SECRET, "PATH": "/usr/bin:/bin"})
    assert run.returncode == 1
    assert "cannot create gateway.state_dir" in run.stderr and "Not a directory" in run.stderr
    assert "Traceback" not in run.stderr
    config.write_text(config.read_text().replace(str(not_a_dir / "state"), str(tmp_path / "state"))
                      .replace("store: {", f"store: {{path: {not_a_dir / 'events.sqlite'}, "))
    run = subprocess.run([console_script("edge-agent"), "run", "-c", str(config)],
                         capture_output=True, text=True, check=False, timeout=60,
                         env={"E2E_MQTT_PASSWORD": SECRET, "PATH": "/usr/bin:/bin"})
    assert run.returncode == 1
    assert "cannot open the event store" in run.stderr and "Traceback" not in run.stderr


def test_only_shared_data_reaches_the_broker(
    tmp_path: Path, mosquitto: Mosquitto, plc_sim: Sim, numba_cache: Path
) -> None:
    devices = (modbus_device("compressor-1", plc_sim.port) + "\n"
               + modbus_device("secret-press", free_tcp_port()).replace(
                   "name: secret-press\n", "name: secret-press\n    share: none\n"))
    config = agent_config(tmp_path, mosquitto, devices)
    text = config.read_text()
    for tag, share in (("energy_kwh", "none"), ("active_power_w", "raw"),
                       ("discharge_temp_c", "events")):
        start = text.index(f"{{name: {tag},")
        end = text.index("}", start)
        text = text[:end] + f", share: {share}" + text[end:]
    config.write_text(text)
    with running_agent(config, mosquitto, numba_cache) as (agent, tail):
        received = tail.until(
            lambda ev: len(windows(ev, "compressor-1")) >= 2
            and sum(e["kind"] == "samples" for e in ev) >= 2, 60, "windows and raw samples")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0
    for window in windows(received, "compressor-1"):
        assert set(window["data"]["tags"]) == set(SERVED) - {"energy_kwh", "discharge_temp_c"}
    samples = [e for e in received if e["kind"] == "samples"]
    served = {r["active_power_w"] for r in plc_sim.rows()}
    for event in samples:
        assert set(event["data"]["tags"]) == {"active_power_w"}
        values = event["data"]["tags"]["active_power_w"]
        assert len(values) == len(event["data"]["dt_ms"]) >= 1
        assert all(v in served for v in values), "raw samples are the values served"
    everything = json.dumps(received)
    assert "energy_kwh" not in everything.replace('"secret-press"', ""), \
        "a tag shared as none must never leave the site"
    assert any(e["kind"] == "heartbeat" for e in received)
    assert "secret-press" not in everything, "a device shared as none is not even named"


def test_unreadable_password_file_is_a_clear_error(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = agent_config(tmp_path, mosquitto, modbus_device("m1", free_tcp_port()))
    config.write_text(config.read_text().replace(
        'password: "${E2E_MQTT_PASSWORD}"', f"password_file: {tmp_path / 'missing'}"))
    run = subprocess.run([console_script("edge-agent"), "run", "-c", str(config)],
                         capture_output=True, text=True, check=False, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 1, run.stderr
    assert "mqtt.password_file" in run.stderr and str(tmp_path / "missing") in run.stderr
    assert "Traceback" not in run.stderr
