"""A sensor fault behind the PLC, end to end: plc-sim serves 7FFFh (32767, what a Siemens
analog input reports for a broken wire or an overflow) in the discharge temperature's
register, in a well-formed answer; the agent, with that tag's `valid_range`, reports the
tag BAD and GOOD again, logs the value once, and keeps it out of every statistic and rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import SECRET, AgentProcess

from agent.events import Envelope
from agent.testing import Mosquitto, MqttCollector, PlcSimControl, start_plc_sim, stop_process

pytestmark = pytest.mark.e2e

BROKEN_WIRE = 0x7FFF
"""The raw word: 3276.7 °C at the register's scale of 0.1."""


def config(tmp_path: Path, broker: Mosquitto, port: int) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
gateway: {{id: gw-e2e, site: lab, state_dir: {tmp_path / "state"}, clock: rtc}}
mqtt: {{host: 127.0.0.1, port: {broker.port}, tls: {{enabled: false}},
       username: e2e, password: "${{E2E_MQTT_PASSWORD}}"}}
store: {{commit_interval_s: 0.1}}
aggregate: {{window_s: 1}}
devices:
  - name: compressor-1
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {port}
    poll_interval_s: 0.1
    tags:
      - {{name: discharge_pressure_bar, table: input, address: 6, type: int16, scale: 0.01}}
      - {{name: discharge_temp_c, table: input, address: 7, type: int16, scale: 0.1,
         unit: °C, valid_range: [-20, 150]}}
detectors:
  - {{device: compressor-1, kind: zscore, name: temp, tags: [discharge_temp_c],
     warmup_samples: 20, threshold_z: 6}}
""")
    return path


def quality_of(events: list[Envelope], tag: str) -> list[str]:
    return [e.data["tags"][tag]["quality"] for e in events
            if e.kind == "quality" and tag in e.data["tags"]]


def bad_samples(events: list[Envelope]) -> list[int]:
    return [e.data["tags"]["discharge_temp_c"]["bad"] for e in events
            if e.kind == "window" and "discharge_temp_c" in e.data["tags"]]


def test_a_broken_wire_is_a_bad_sample_said_once_and_in_no_statistic(
    tmp_path: Path, mosquitto: Mosquitto, numba_cache: Path
) -> None:
    with open(tmp_path / "plc-sim.log", "w") as log:
        sim, info = start_plc_sim("--control-port", "0", stderr=log)
    try:
        with PlcSimControl.of(info) as control, \
                MqttCollector(mosquitto.host, mosquitto.port, "lab/gw-e2e/#") as cloud, \
                AgentProcess(config(tmp_path, mosquitto, info["port"]), tmp_path / "agent.log",
                             numba_cache, extra_env={"E2E_MQTT_PASSWORD": SECRET}) as agent:
            cloud.wait_for(lambda ms: any(e.kind == "window" for _, e in ms), timeout_s=60,
                           what="a first window")
            control.set_fault("words", words=[BROKEN_WIRE], unit=1, table="input", first=7,
                              last=7)
            said = agent.wait_logged("value_out_of_range", timeout_s=30)
            cloud.wait_for(lambda ms: "bad" in quality_of([e for _, e in ms],
                                                          "discharge_temp_c"),
                           timeout_s=30, what="the temperature reported BAD")
            control.clear()
            agent.wait_logged("value_back_in_range", timeout_s=30)
            received = cloud.wait_for(
                lambda ms: quality_of([e for _, e in ms], "discharge_temp_c")[-1:] == ["good"]
                and sum(bad_samples([e for _, e in ms])) >= 1,
                timeout_s=30, what="the temperature GOOD again, its window counting the BAD")
            assert agent.terminate() == 0
            excursions = len(agent.logged("value_out_of_range"))
    finally:
        stop_process(sim)

    assert said["tag"] == "discharge_temp_c" and said["value"] == pytest.approx(3276.7)
    assert said["valid_range"] == [-20, 150]
    assert excursions == 1, "said once per excursion, not once per poll"
    events = [e for _, e in received]
    assert quality_of(events, "discharge_temp_c") == ["bad", "good"]
    assert "discharge_pressure_bar" not in {t for e in events if e.kind == "quality"
                                            for t in e.data["tags"]}, "the other tag unaffected"
    windows = [e.data["tags"]["discharge_temp_c"] for e in events if e.kind == "window"
               and "discharge_temp_c" in e.data["tags"]]
    assert sum(w["bad"] for w in windows) >= 1
    assert all(w["max"] is None or w["max"] < 150 for w in windows), "in no statistic"
    assert [e for e in events if e.kind == "anomaly"] == [], "nor seen by the rule"
