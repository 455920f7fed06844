"""The agent as a user starts it, reading an OPC UA server: plc-sim (OPC UA side), Mosquitto,
`edge-agent run` as real processes; subscribed and polled tags reach the broker as windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import SECRET, AgentProcess, agent_config

from agent.events import Envelope
from agent.testing import Mosquitto, MqttCollector, start_plc_sim, stop_process

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
