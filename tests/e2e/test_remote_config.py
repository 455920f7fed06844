"""Signed remote configuration (real plc-sims, Mosquitto and `edge-agent run`): a push applied
with the open windows of unchanged devices kept; every kind of bad message refused with its
reason and nothing changed; a device that never comes up rolled back; a push sent while the
agent is away applied when it returns; a kill in the middle of applying leaves a valid file."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import (
    AgentProcess,
    RawCollector,
    Received,
    Sim,
    agent_config,
    is_sentinel,
    modbus_device,
    stop_and_collect,
)

from agent.config import load_config
from agent.config.signed import load_private_key, new_key_pair, sign
from agent.testing import Mosquitto, free_tcp_port

pytestmark = pytest.mark.e2e

TOPICS = "lab/gw-e2e/+/+"  # events, not the command topic
COMMAND_TOPIC = "lab/gw-e2e/_command"
SENTINEL_TOPIC = "lab/gw-e2e/_end-of-test/end"
CONFIRM_S = 4
HOUR_NS = 3600 * 10**9


def events(messages: list[Received], kind: str, device: str = "_gateway") -> list[Received]:
    return [m for m in messages if not is_sentinel(m) and m.kind == kind and m.device == device]


class Fleet:
    """The signing side of the test, written against the message format, not the agent's
    handling of it: signs with its key and publishes at QoS 1 from its own client."""

    def __init__(self, folder: Path, broker: Mosquitto) -> None:
        private, public = new_key_pair()
        (folder / "fleet.key").write_bytes(private)
        (folder / "fleet.pub").write_bytes(public)
        self.public = folder / "fleet.pub"
        self.key = load_private_key(folder / "fleet.key")
        self.broker = broker

    def message(self, version: int, *, config: str | None = None,
                command: list[str] | None = None, gateway: str = "gw-e2e",
                expires_ns: int | None = None, key: Any = None) -> bytes:
        now = time.time_ns()
        body: dict[str, Any] = {"gateway": gateway, "version": version, "issued_ns": now,
                                "expires_ns": expires_ns or now + HOUR_NS}
        if config is not None:
            body |= {"type": "config", "config": config}
        else:
            body |= {"type": "command", "command": command}
        return sign(body, key or self.key)

    def publish(self, payload: bytes) -> None:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=f"fleet-{os.getpid()}")
        client.connect(self.broker.host, self.broker.port, keepalive=30)
        client.loop_start()
        try:
            client.publish(COMMAND_TOPIC, payload, qos=1).wait_for_publish(timeout=10)
        finally:
            client.disconnect()
            client.loop_stop()


def remote_section(fleet: Fleet, allow_restart: bool = False) -> str:
    return (f"remote: {{enabled: true, trusted_keys: [{fleet.public}], "
            f"confirm_s: {CONFIRM_S}, allow_restart: {str(allow_restart).lower()}}}\n")


def with_remote(path: Path, fleet: Fleet, allow_restart: bool = False) -> str:
    text = path.read_text() + remote_section(fleet, allow_restart)
    path.write_text(text)
    return text


def wait_event(collector: RawCollector, kind: str, count: int = 1,
               timeout_s: float = 30) -> Received:
    got = collector.wait_for(lambda ms: len(events(ms, kind)) >= count, timeout_s=timeout_s,
                             what=f"{count} {kind} event(s)")
    return events(got, kind)[count - 1]


def up(device: str) -> Any:
    return lambda ms: any(m.data.get("status") == "up"
                          for m in events(ms, "device_health", device))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_pushes_applied_refused_and_rolled_back(
    tmp_path: Path, mosquitto: Mosquitto, sims: list[Sim], numba_cache: Path
) -> None:
    fleet = Fleet(tmp_path, mosquitto)
    one = modbus_device("compressor-1", sims[0].port)
    two = modbus_device("compressor-2", sims[1].port)
    config = agent_config(tmp_path, mosquitto, one, window_s=3600)
    first = with_remote(config, fleet)
    second = agent_config(tmp_path, mosquitto, one + "\n" + two, window_s=3600).read_text() \
        + remote_section(fleet)
    config.write_text(first)
    dead = second.replace(f"port: {sims[1].port}", f"port: {free_tcp_port()}")
    with RawCollector(mosquitto.host, mosquitto.port, TOPICS) as collector, \
            AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:
        collector.wait_for(up("compressor-1"), timeout_s=60, what="compressor-1 up")
        push_ns = time.time_ns()
        fleet.publish(fleet.message(1, config=second))
        applied = wait_event(collector, "config_applied").data
        assert (applied["version"], applied["sha256"]) == (1, sha(second))
        assert applied["previous_sha256"] == sha(first)
        assert (applied["kept"], applied["started"]) == (["compressor-1"], ["compressor-2"])
        assert config.read_text() == second
        assert config.with_name("config.yaml.previous").read_text() == first

        # Refused, each for its reason, and nothing changed.
        other_private, _ = new_key_pair()
        (tmp_path / "other.key").write_bytes(other_private)
        stranger = load_private_key(tmp_path / "other.key")
        tampered = json.loads(fleet.message(5, config=first))
        tampered["body"] = tampered["body"].replace('"version":5', '"version":6')
        refusals = [
            (b"rm -rf / # unsigned, from anyone with broker access", "malformed"),
            (fleet.message(2, config=first, key=stranger), "unknown_key"),
            (json.dumps(tampered).encode(), "bad_signature"),
            (fleet.message(3, config=first, gateway="gw-other"), "wrong_gateway"),
            (fleet.message(4, config=first, expires_ns=time.time_ns() - 1), "expired"),
            (fleet.message(1, config=first), "replayed"),
            (fleet.message(7, config=second.replace("poll_interval_s: 0.2",
                                                    "poll_interval_s: -1")), "invalid_config"),
            (fleet.message(8, config=second.replace("confirm_s: 4", "confirm_s: 5")),
             "forbidden_change"),
            (fleet.message(9, config=second.replace("commit_interval_s: 0.1",
                                                    "commit_interval_s: 0.2")),
             "forbidden_change"),
            (fleet.message(10, command=["shell", "cat", "/etc/shadow"]), "unknown_command"),
        ]
        for payload, _ in refusals:
            fleet.publish(payload)
        wait_event(collector, "config_rejected", count=len(refusals))
        rejected = [m.data for m in events(collector.snapshot(), "config_rejected")]
        assert [r["reason"] for r in rejected] == [reason for _, reason in refusals]
        assert rejected[-1]["refused_total"] == len(refusals)
        invalid = rejected[6]
        assert any("poll_interval_s" in p and p.startswith("version 7:") for p in
                   invalid["problems"]), invalid
        assert "store" in rejected[8]["detail"] and "allow_restart" in rejected[8]["detail"]
        assert config.read_text() == second, "no refused message changed the file"
        assert agent.process.poll() is None

        # Nowhere to write the new file (a directory stands where it goes): refused, and the
        # agent runs on.
        blocker = config.with_name("config.yaml.incoming")
        blocker.mkdir()
        fleet.publish(fleet.message(10, config=first))
        failed = wait_event(collector, "config_rejected", count=len(refusals) + 1).data
        assert failed["reason"] == "apply_failed" and "writable" in failed["detail"], failed
        blocker.rmdir()
        assert config.read_text() == second and agent.process.poll() is None

        # A flood of forgeries: each refused and counted; the events about them are capped.
        flood = 25
        for n in range(flood):
            fleet.publish(fleet.message(100 + n, config=first, key=stranger))
        for n, command in enumerate((["status"], ["buffer", "stats"], ["reload"]), start=1):
            fleet.publish(fleet.message(time.time_ns(), command=command))
            answer = wait_event(collector, "command_answer", count=n).data
            assert answer["ok"] and answer["command"] == command, answer
        answers = [m.data["answer"] for m in events(collector.snapshot(), "command_answer")]
        assert set(answers[0]["devices"]) == {"compressor-1", "compressor-2"}
        refused_total = len(refusals) + 1 + flood
        assert answers[0]["remote"]["refused"] == refused_total
        assert answers[1]["store_id"] and "depth" in answers[1]
        assert answers[2]["kept"] == ["compressor-1", "compressor-2"]
        reported = events(collector.snapshot(), "config_rejected")
        assert len(reported) == 20, "at most 20 a minute"
        assert reported[-1].data["refused_total"] == 20
        assert len(agent.logged("remote_message_refused")) == refused_total

        # compressor-2 moved to a port nobody serves: not up within confirm_s, rolled back.
        fleet.publish(fleet.message(11, config=dead))
        rolled = wait_event(collector, "config_rolled_back", timeout_s=CONFIRM_S + 30).data
        assert rolled["version"] == 11 and rolled["devices_down"] == ["compressor-2"]
        assert rolled["restored_sha256"] == sha(second)
        assert config.read_text() == second
        collector.wait_for(lambda ms: sum(m.data.get("status") == "up" for m in
                                          events(ms, "device_health", "compressor-2")) >= 2,
                           timeout_s=30, what="compressor-2 up again on the old file")
        received = stop_and_collect(agent, mosquitto, collector, SENTINEL_TOPIC)
    seqs = sorted({m.seq for m in received})
    assert seqs == list(range(1, seqs[-1] + 1)), "a seq is missing"
    [window] = events(received, "window", "compressor-1")
    assert window.data["start_ns"] < push_ns, "compressor-1's window spans every apply"
    assert len(events(received, "device_health", "compressor-1")) == 1, "never restarted"


def test_a_push_waits_for_the_agent_and_a_kill_while_applying_leaves_a_valid_file(
    tmp_path: Path, mosquitto: Mosquitto, sims: list[Sim], numba_cache: Path
) -> None:
    fleet = Fleet(tmp_path, mosquitto)
    config = agent_config(tmp_path, mosquitto, modbus_device("compressor-1", sims[0].port))
    config.write_text(config.read_text() + "detectors:\n  - {device: compressor-1, kind: zscore, "
                      "name: current, tags: [motor_current_a], warmup_samples: 20}\n")
    base = with_remote(config, fleet, allow_restart=True)

    def variant(version: int) -> str:  # a change the reload applies at once
        return base + f"health: {{heartbeat_s: {60 + version}}}\n"

    def outcome(version: int) -> Received:
        found = collector.wait_for(lambda ms: any(
            m.data["version"] == version for m in events(ms, "config_applied")
            + events(ms, "config_rolled_back")), timeout_s=60, what=f"version {version} done")
        return next(m for m in events(found, "config_applied")
                    + events(found, "config_rolled_back") if m.data["version"] == version)

    with RawCollector(mosquitto.host, mosquitto.port, TOPICS) as collector:
        with AgentProcess(config, tmp_path / "agent-0.log", numba_cache) as agent:
            collector.wait_for(up("compressor-1"), timeout_s=60, what="compressor-1 up")
            assert agent.terminate() == 0  # its session stays at the broker
        fleet.publish(fleet.message(1, config=variant(1)))  # while the agent is away
        agent = AgentProcess(config, tmp_path / "agent-1.log", numba_cache)
        try:
            assert outcome(1).kind == "config_applied"
            assert config.read_text() == variant(1)
            fleet.publish(fleet.message(time.time_ns(), command=["relearn", "compressor-1"]))
            answer = wait_event(collector, "command_answer").data
            assert answer["ok"], answer
            assert answer["answer"]["forgotten"]["compressor-1"]["rules"] == ["current"]
            # Killed as soon as the broker has the push, then once the new file is written:
            # each start runs a whole file, old or new, and finishes the application (the
            # push comes again from the session, or the written file is confirmed).
            for version, kill_at in ((2, "broker has it"), (3, "remote_config_written")):
                fleet.publish(fleet.message(version, config=variant(version)))
                if kill_at != "broker has it":
                    agent.wait_logged(kill_at)
                agent.kill()
                assert config.read_text() in (variant(version - 1), variant(version))
                load_config(config, {"E2E_MQTT_PASSWORD": "x"})  # a whole, valid file
                agent = AgentProcess(config, tmp_path / f"agent-{version}.log", numba_cache)
                done = outcome(version)
                assert done.kind == "config_applied", done.data
                assert config.read_text() == variant(version)
            # A change that applies at start: the agent writes it, exits for systemd to start
            # it again (EX_TEMPFAIL), and the start confirms it.
            restart = variant(3).replace("commit_interval_s: 0.1", "commit_interval_s: 0.2")
            fleet.publish(fleet.message(4, config=restart))
            assert agent.process.wait(timeout=30) == 75
            assert config.read_text() == restart
            agent = AgentProcess(config, tmp_path / "agent-4.log", numba_cache)
            assert outcome(4).data["restarted"] is True
            # Where exactly a kill lands is a race; what each start finds is not: the state
            # a kill leaves between writing the file and confirming it, or before the write.
            assert agent.terminate() == 0
            state_file = tmp_path / "state" / "remote.json"
            for version, sha256, kind in ((98, sha(restart), "config_applied"),
                                          (99, "0" * 64, "config_rolled_back")):
                state = json.loads(state_file.read_text())
                state["pending"] = {"version": version, "sha256": sha256, "key": "k",
                                    "previous_sha256": sha(variant(3)),  # not checked
                                    "up_before": ["compressor-1"], "restart": False}
                state_file.write_text(json.dumps(state))
                agent = AgentProcess(config, tmp_path / f"agent-{version}.log", numba_cache)
                done = outcome(version)
                assert done.kind == kind, done.data
                assert agent.terminate() == 0
            assert done.data["reason"] == "the agent stopped before the new file was in place"
            assert events(collector.snapshot(), "config_applied")[-1].data["restarted"] is True
            assert json.loads(state_file.read_text())["pending"] is None
        finally:
            agent.__exit__(None, None, None)
