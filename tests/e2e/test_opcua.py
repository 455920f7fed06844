"""The agent as a user starts it, reading an OPC UA server: plc-sim (OPC UA side), Mosquitto,
`edge-agent run` as real processes; subscribed and polled tags reach the broker as windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import SECRET, AgentProcess, agent_config

from agent.events import Envelope
from agent.testing import Mosquitto, MqttCollector, PlcSimControl, start_plc_sim, stop_process

pytestmark = pytest.mark.e2e


def test_opcua_values_reach_the_broker_as_the_simulator_served_them(
    tmp_path: Path, mosquitto: Mosquitto, numba_cache: Path
) -> None:
    trace = tmp_path / "trace.jsonl"
    with open(tmp_path / "plc-sim.log", "w") as log:
        sim, info = start_plc_sim("--opcua-port", "0", "--speed", "4", "--trace", str(trace),
                                  stderr=log, protocol="opcua")
    try:
        device = f"""  - name: oven
    protocol: opcua
    endpoint: {info["endpoint"]}
    publishing_interval_s: 0.2
    poll_interval_s: 0.5
    tags:
      - {{name: active_power_w, node: "ns=2;s=compressor.active_power_w", sampling_interval_s: 0.1}}
      - {{name: pressure_bar, browse_path: "2:compressor/2:discharge_pressure_bar"}}
      - {{name: state, node: "ns=2;s=compressor.state", mode: poll}}
      - {{name: firmware, node: "ns=2;s=compressor.firmware", mode: poll}}"""
        config = agent_config(tmp_path, mosquitto, device)
        with MqttCollector(mosquitto.host, mosquitto.port, "lab/gw-e2e/oven/#") as cloud, \
                AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:
            received = cloud.wait_for(
                lambda ms: len([e for _, e in ms if e.kind == "window"]) >= 2,
                timeout_s=60, what="two windows of the OPC UA device")
            assert agent.terminate() == 0
    finally:
        stop_process(sim)

    events: list[Envelope] = [e for _, e in received]
    health = [e.data for e in events if e.kind == "device_health"]
    assert health[0]["status"] == "up"
    served = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    windows = [e.data["tags"] for e in events if e.kind == "window"]
    # Every numeric tag is aggregated (a window of a loaded machine may miss a poll); the
    # text tag travels beside the numbers, never as one.
    assert set().union(*windows) == {"active_power_w", "pressure_bar", "state"}
    for tags in windows:
        for tag, key in (("active_power_w", "active_power_w"),
                         ("pressure_bar", "discharge_pressure_bar"), ("state", "state")):
            if tag not in tags:
                continue
            assert tags[tag]["n"] > 0 and tags[tag]["bad"] == 0
            values = [row[key] for row in served]
            assert any(v == pytest.approx(tags[tag]["last"], rel=1e-9) for v in values), tag
    assert SECRET not in (tmp_path / "agent.log").read_text()


def test_subscribed_windows_come_back_once_lost_publish_answers_are_answered_again(
    tmp_path: Path, mosquitto: Mosquitto, numba_cache: Path
) -> None:
    """Field trial (issue 20), as a user runs it: the server loses its publish answers for a
    while, then answers again; the subscribed tag reaches the broker again within a bound,
    and the polled tag of the same device never stopped."""
    with open(tmp_path / "plc-sim.log", "w") as log:
        sim, info = start_plc_sim("--opcua-port", "0", "--control-port", "0", stderr=log,
                                  protocol="opcua")
    stall_s = (3 + 5) * 0.2
    try:
        device = f"""  - name: oven
    protocol: opcua
    endpoint: {info["endpoint"]}
    timeout_s: 2
    publishing_interval_s: 0.2
    keepalive_count: 3
    stall_intervals: 5
    poll_interval_s: 0.2
    tags:
      - {{name: active_power_w, node: "ns=2;s=compressor.active_power_w", sampling_interval_s: 0.1}}
      - {{name: state, node: "ns=2;s=compressor.state", mode: poll}}"""
        config = agent_config(tmp_path, mosquitto, device)

        def windows(messages: list[tuple[str, Envelope]]) -> list[dict[str, object]]:
            return [e.data["tags"] for _, e in messages if e.kind == "window"]

        def health(messages: list[tuple[str, Envelope]]) -> list[tuple[str, str]]:
            return [(e.data["status"], e.data["reason"]) for _, e in messages
                    if e.kind == "device_health"]

        with MqttCollector(mosquitto.host, mosquitto.port, "lab/gw-e2e/oven/#") as cloud, \
                AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent, \
                PlcSimControl.of(info) as control:
            cloud.wait_for(lambda ms: sum("active_power_w" in w for w in windows(ms)) >= 2,
                           timeout_s=60, what="windows with the subscribed tag")
            with pytest.raises(ValueError, match="no OPC UA fault 'freeze'"):
                control.opcua("freeze")
            assert control.opcua("drop_publish_responses")["count"] >= 1
            cloud.wait_for(lambda ms: ("degraded", "subscription_stalled") in health(ms),
                           timeout_s=30, what="the stall reported")
            lost = len(cloud.snapshot())
            # Windows of the polls alone: the session goes on while publishing is lost.
            cloud.wait_for(lambda ms: any("state" in w and "active_power_w" not in w
                                          for w in windows(ms[lost:])),
                           timeout_s=30, what="a window of the polled tag alone")
            control.opcua("answer_publish_requests")
            answered = len(cloud.snapshot())
            # A window is 1 s; the data is back within about one PublishRequest timeout.
            cloud.wait_for(lambda ms: any("active_power_w" in w
                                          for w in windows(ms[answered:])),
                           timeout_s=3 * stall_s + 5, what="the subscribed tag back")
            received = cloud.snapshot()
            assert agent.terminate() == 0
    finally:
        stop_process(sim)
    assert health(received) == [("up", ""), ("degraded", "subscription_stalled"), ("up", "")]
