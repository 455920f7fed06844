"""`mqtt.format: sparkplug` as a Sparkplug host sees it: the agent, plc-sim and Mosquitto as
processes; a host application written here on paho (none of the agent's code); every message
decoded by Eclipse Tahu's JavaScript decoder and by pysparkplug, two implementations that share
nothing with the agent's."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import AgentProcess, demo_tags

from agent.store import read_stats
from agent.testing import (
    Mosquitto,
    PlcSimControl,
    console_script,
    start_plc_sim,
    stop_process,
    wait_until,
)
from agent.testing.sparkplug_peers import install, pysparkplug_decode, tahu_decode, tahu_encode

pytestmark = pytest.mark.e2e

GROUP, NODE, HOST = "plant", "gw-spb", "scada"
DEVICE = "compressor-1"


@pytest.fixture(scope="module", autouse=True)
def _decoders() -> None:
    install()  # ~/.cache/edge-agent: npm sparkplug-payload, a venv with pysparkplug


@pytest.fixture
def numba_cache() -> Path:
    """The kernels' persistent cache of the checkout (tests/conftest.py): compiled once for
    every run, not once per session, so this module's agents start in a second or two."""
    return Path(os.environ["NUMBA_CACHE_DIR"])


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    arrived: float

    @property
    def type(self) -> str:
        return self.topic.split("/")[2]

    @property
    def device(self) -> str | None:
        parts = self.topic.split("/")
        return parts[4] if len(parts) > 4 else None


class Host:
    """A Sparkplug host application on paho: subscribed to the whole namespace, keeping every
    message in arrival order; it publishes its STATE and NCMDs."""

    def __init__(self, broker: Mosquitto) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id="scada-host", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"spBv1.0/{GROUP}/#", qos=1)
        assert subscribed.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), time.monotonic()))

    def got(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def of_type(self, kind: str, device: str | None = None) -> list[Message]:
        return [m for m in self.got() if m.type == kind and (device is None or m.device == device)]

    def state(self, online: bool) -> None:
        body = json.dumps({"online": online, "timestamp": time.time_ns() // 1_000_000})
        self.client.publish(f"spBv1.0/STATE/{HOST}", body, qos=1, retain=True).wait_for_publish(5)

    def rebirth(self) -> None:
        ask = tahu_encode({"timestamp": time.time_ns() // 1_000_000, "metrics": [
            {"name": "Node Control/Rebirth", "type": "Boolean", "value": True}]})
        self.client.publish(f"spBv1.0/{GROUP}/NCMD/{NODE}", ask, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def host(mosquitto: Mosquitto) -> Iterator[Host]:
    listener = Host(mosquitto)
    yield listener
    listener.close()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[tuple[int, PlcSimControl]]:
    with open(tmp_path / "plc-sim.log", "w") as log:
        process, info = start_plc_sim("--scenario", "compressor", "--speed", "4",
                                      "--control-port", "0", stderr=log)
        control = PlcSimControl.of(info)
        try:
            yield int(info["port"]), control
        finally:
            control.close()
            stop_process(process)


def _config(tmp_path: Path, broker: Mosquitto, port: int, *, primary_host: bool) -> Path:
    tags = demo_tags().replace("unit: W}", "unit: W, report_on_change: true}").replace(
        "unit: A}", "unit: A, report_on_change: true}")
    host = f", primary_host_id: {HOST}" if primary_host else ""
    path = tmp_path / "config.yaml"
    path.write_text(f"""
gateway: {{id: {NODE}, site: lab, state_dir: {tmp_path / "state"}, clock: rtc}}
mqtt: {{host: 127.0.0.1, port: {broker.port}, tls: {{enabled: false}}, replay_after_s: 0.5,
       format: sparkplug, sparkplug: {{group_id: {GROUP}{host}}}}}
store: {{commit_interval_s: 0.1}}
aggregate: {{window_s: 0.2}}
devices:
""" + "".join(f"""  - name: {name}
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {port}
    timeout_s: 0.3
    poll_interval_s: 0.02
{tags}""" for name in (DEVICE, "compressor-2", "compressor-3")))
    return path


def _decoded(messages: list[Message]) -> list[dict[str, Any]]:
    return tahu_decode([m.payload for m in messages])


def _sessions(messages: list[Message]) -> list[list[tuple[Message, dict[str, Any]]]]:
    """The agent's messages decoded, cut at each NBIRTH (NDEATH and STATE left out)."""
    mine = [m for m in messages if m.type not in ("NDEATH", "NCMD", "DCMD")]
    out: list[list[tuple[Message, dict[str, Any]]]] = []
    for message, payload in zip(mine, _decoded(mine), strict=True):
        if message.type == "NBIRTH":
            out.append([])
        assert out, f"{message.topic} before any NBIRTH"
        out[-1].append((message, payload))
    return out


def _check_seq_and_aliases(session: list[tuple[Message, dict[str, Any]]]) -> int:
    """seq counts on by one (mod 256) from the NBIRTH's 0; every alias of data resolves to a
    metric of its device's last birth, by name and type. Returns how often seq wrapped."""
    births: dict[str | None, dict[str, tuple[str, str]]] = {}
    wraps, expected = 0, 0
    for message, payload in session:
        seq = int(payload["seq"])
        assert seq == expected, f"{message.topic}: seq {seq}, expected {expected}"
        wraps += seq == 255
        expected = (seq + 1) % 256
        if message.type in ("NBIRTH", "DBIRTH"):
            births[message.device] = {m["alias"]: (m["name"], m["type"])
                                      for m in payload["metrics"] if "alias" in m}
            continue
        known = births.get(message.device)
        assert known is not None, f"{message.topic} before its birth"
        for metric in payload["metrics"]:
            assert "name" not in metric, "data goes by alias"
            assert metric["alias"] in known, f"{message.topic}: alias {metric['alias']} unborn"
            assert metric["type"] == known[metric["alias"]][1]
    return wraps


def _bdseq(payload: dict[str, Any]) -> int:
    [metric] = [m for m in payload["metrics"] if m["name"] == "bdSeq"]
    assert metric["type"] == "Int64"
    return int(metric["value"])


def _historical_data(messages: list[Message]) -> list[dict[str, Any]]:
    data = [m for m in messages if m.type == "DDATA"]
    return [p for p in _decoded(data) if any(m.get("isHistorical") for m in p["metrics"])]


def test_a_host_sees_births_after_its_state_then_history_wrap_rebirth_and_device_death(
    tmp_path: Path, mosquitto: Mosquitto, host: Host, sim: tuple[int, PlcSimControl],
    numba_cache: Path,
) -> None:
    port, control = sim
    config = _config(tmp_path, mosquitto, port, primary_host=True)
    with AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:
        agent.wait_logged("sparkplug_waiting_for_host")
        up = agent.wait_logged("device_up")
        # Events made while the host is away are stored: wait for a few windows' worth.
        stored_from = time.monotonic()
        wait_until(lambda: time.monotonic() - stored_from > 1.5, timeout_s=5,
                   what="data stored while the host is offline")
        assert up and host.got() == [], "nothing is published before the host is online"

        online_at = time.time_ns() // 1_000_000
        host.state(True)
        wait_until(lambda: _historical_data(host.got()) and any(
            int(p["seq"]) == 255 for p in _decoded(host.of_type("DDATA"))),
            timeout_s=20, what="historical data and a seq wrap", interval_s=0.3)
        first = host.got()[0]
        assert first.type == "NBIRTH", "births come first, after STATE online"
        history = _historical_data(host.got())
        assert all(int(m["timestamp"]) < online_at for p in history for m in p["metrics"]), \
            "is_historical marks what was stored while the host was offline"

        host.rebirth()
        wait_until(lambda: len(host.of_type("NBIRTH")) == 2, timeout_s=5, what="the rebirth")
        wait_until(lambda: len(host.of_type("DBIRTH", DEVICE)) == 2, timeout_s=5,
                   what="the device's rebirth")

        control.set_fault("no_answer")
        wait_until(lambda: host.of_type("DDEATH", DEVICE), timeout_s=10, what="DDEATH")
        control.clear()
        wait_until(lambda: len(host.of_type("DBIRTH", DEVICE)) == 3, timeout_s=10,
                   what="DBIRTH when the device is up again")

        host.state(False)  # the node says NDEATH, disconnects, connects again and waits
        wait_until(lambda: host.of_type("NDEATH"), timeout_s=5, what="NDEATH: host offline")
        agent.wait_logged("sparkplug_waiting_for_host", count=2)
        host.state(True)
        wait_until(lambda: len(host.of_type("NBIRTH")) == 3, timeout_s=10,
                   what="the births of the new connection")
        assert agent.terminate() == 0
    wait_until(lambda: len(host.of_type("NDEATH")) == 2, timeout_s=5,
               what="NDEATH at a clean stop")

    got = [m for m in host.got() if m.type != "NCMD"]  # the agent's, not the host's own
    sessions = _sessions(got)
    assert len(sessions) == 3, "the NBIRTH, the one NCMD asked for, the new connection's"
    births = [_bdseq(s[0][1]) for s in sessions]
    deaths = [_bdseq(p) for p in _decoded(host.of_type("NDEATH"))]
    assert births == [0, 0, 1] and deaths == [0, 1], "a rebirth keeps bdSeq, a connection not"
    offline = [m.type for m in got[got.index(host.of_type("NDEATH")[0]) + 1:]]
    assert offline[0] == "NBIRTH", "nothing between the host going offline and its online"
    wraps = sum(_check_seq_and_aliases(s) for s in sessions)
    assert wraps >= 1, "seq wraps from 255 to 0"
    death = [m.type for m in got if m.device == DEVICE]
    after = death[death.index("DDEATH"):]
    assert after[:2] == ["DDEATH", "DBIRTH"], "no data of a dead device until it is born again"

    # pysparkplug reads the same messages, names resolved through the births it saw.
    theirs = pysparkplug_decode([(m.topic, m.payload) for m in got])
    ours = _decoded(got)
    assert [p["seq"] for p in theirs] == [None if "seq" not in o else int(o["seq"]) for o in ours]
    names = {m["name"] for p, msg in zip(theirs, got, strict=True) if msg.type == "DDATA"
             for m in p["metrics"]}
    assert {"active_power_w/mean", "active_power_w/value", "Health/status"} <= names


def test_the_will_is_an_ndeath_whose_bdseq_matches_the_birth_across_restarts(
    tmp_path: Path, mosquitto: Mosquitto, host: Host, sim: tuple[int, PlcSimControl],
    numba_cache: Path,
) -> None:
    config = _config(tmp_path, mosquitto, sim[0], primary_host=False)
    shown_file = tmp_path / "tail.jsonl"
    with open(shown_file, "w") as out:
        tail = subprocess.Popen([console_script("edge-agent"), "tail", "-c", str(config),
                                 "--json"], stdout=out, stderr=subprocess.PIPE, text=True)
    assert tail.stderr is not None
    said = [tail.stderr.readline()]  # until SUBACK (or the process dies)
    while said[-1] and not said[-1].startswith("subscribed to"):
        said.append(tail.stderr.readline())
    with AgentProcess(config, tmp_path / "agent-1.log", numba_cache) as agent:
        wait_until(lambda: host.of_type("DDATA"), timeout_s=15, what="the first data")
        agent.kill()  # no DISCONNECT: the broker publishes the will
    wait_until(lambda: host.of_type("NDEATH"), timeout_s=5, what="the will")
    with AgentProcess(config, tmp_path / "agent-2.log", numba_cache) as agent:
        wait_until(lambda: len(host.of_type("NBIRTH")) == 2, timeout_s=15, what="a new NBIRTH")
        assert agent.terminate() == 0
    wait_until(lambda: len(host.of_type("NDEATH")) == 2, timeout_s=5, what="the clean NDEATH")
    stop_process(tail)
    lines = shown_file.read_text().splitlines()
    shown = [json.loads(line) for line in lines[:-1]]  # the last may be cut by the SIGTERM
    assert [m["type"] for m in shown].count("NBIRTH") == 2, "edge-agent tail reads Sparkplug"
    named = {m["name"] for s in shown if s["type"] == "DDATA" for m in s["metrics"]}
    assert "active_power_w/mean" in named, "tail names data by the births it saw"

    births = [_bdseq(p) for p in _decoded(host.of_type("NBIRTH"))]
    deaths = [_bdseq(p) for p in _decoded(host.of_type("NDEATH"))]
    assert births == deaths == [0, 1], "the will of a connection names its birth; a restart goes on"
    assert read_stats(tmp_path / "state" / "events.sqlite").depth == 0, \
        "every DDATA was acknowledged (QoS 1) and so deleted"
    for death in _decoded(host.of_type("NDEATH")):
        assert "seq" not in death, "NDEATH carries no seq"
