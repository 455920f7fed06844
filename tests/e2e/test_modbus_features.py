"""The Modbus data model through the whole agent, and the technician's tools, as processes.

One simulated compressor; the agent reads it with datasheet register numbers, a bit, a
text register, a tag reported on change and a tag the device does not have; `plan`, `read`
and `probe` are run as a technician runs them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import AgentProcess, RawCollector, Received, Sim, agent_config

from agent.testing import Mosquitto, console_script

pytestmark = pytest.mark.e2e

DEVICE = """  - name: comp
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {port}
    timeout_s: 0.5
    poll_interval_s: 0.1
    poll_groups: {{slow: 0.5}}
    tags:
      - {{name: active_power_w, register: 30003, type: float32, unit: W}}
      - {{name: machine_state, register: 30009, type: uint16, report_on_change: true}}
      - {{name: running_bit, register: 30009, type: bool, bit: 1}}
      - {{name: spare, register: 30012, type: uint16}}
      - {{name: firmware, register: 40103, type: string, length_registers: 1, poll_group: slow}}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([console_script("edge-agent"), *args], check=False, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "E2E_MQTT_PASSWORD": "x"})


def test_the_agent_reports_changes_texts_and_a_refused_tag_once(
    tmp_path: Path, mosquitto: Mosquitto, sims: list[Sim], numba_cache: Path,
) -> None:
    sim = sims[0]
    config = agent_config(tmp_path, mosquitto, DEVICE.format(port=sim.port), window_s=1.0)
    def kinds(received: list[Received]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for message in received:
            if message.fields is not None and "kind" in message.fields:
                out.setdefault(message.kind, []).append(message.fields)
        return out

    with RawCollector(mosquitto.host, mosquitto.port, "lab/gw-e2e/#") as collector:
        agent = AgentProcess(config, tmp_path / "agent.log", numba_cache)
        try:
            received = collector.wait_for(
                lambda r: len(kinds(r).get("window", [])) >= 3, timeout_s=30,
                what="three windows")
        finally:
            assert agent.terminate() == 0
    got = kinds(received)
    health = [e["data"] for e in got["device_health"] if e["dev"] == "comp"]
    assert [h["status"] for h in health] == ["degraded"], health
    assert "tag spare" in health[0]["detail"] and "register 30012 = input 11" in health[0]["detail"]
    assert len(agent.logged("device_degraded")) == 1
    changes = [e["data"]["tags"] for e in got["change"]]
    assert changes[0]["machine_state"]["previous"] is None
    assert any("firmware" in c and c["firmware"]["value"] == "\x01\x02" for c in changes)
    window = got["window"][-1]["data"]["tags"]
    assert window["spare"]["n"] == 0 and window["spare"]["bad"] > 0
    assert window["active_power_w"]["n"] > 0
    assert window["running_bit"]["min"] in (0.0, 1.0)


def test_plan_read_and_probe_as_a_technician_runs_them(tmp_path: Path, sims: list[Sim]) -> None:
    sim = sims[0]
    config = _config_without_broker(tmp_path, sim)
    plan = run("plan", "-c", str(config))
    assert plan.returncode == 0, plan.stderr
    assert "poll group default every 0.1 s: 1 request(s)" in plan.stdout
    assert "FC4 read input registers 2..11 (10)" in plan.stdout
    assert "spare: uint16, register 30012 = input 11 (zero-based)" in plan.stdout

    read = run("read", "-c", str(config))
    assert read.returncode == 1, read.stderr  # a tag refused: a script must notice
    assert "device comp: 1 tag(s) refused by the device: spare" in read.stderr
    rows = {line.split()[0]: line for line in read.stdout.splitlines()[2:]}
    assert "error: exception code 2 (illegal data address)" in rows["spare"]
    assert rows["firmware"].split()[-1] == repr("\x01\x02")
    # The machine runs on: its state is one the simulator served during the test.
    assert int(rows["machine_state"].split()[-1]) in {row["state"] for row in sim.rows()}

    # The firmware version word 0x0102 does not change: 258, or 0x0201 = 513 bytes swapped.
    probe = run("probe", "modbus", f"tcp://127.0.0.1:{sim.port}", "--register", "40103", "--count", "1")
    assert probe.returncode == 0, probe.stderr
    assert re.search(r"^  uint16 +\+0 +258 +258 +513 +513$", probe.stdout, re.MULTILINE), probe.stdout
    refused = run("probe", "modbus", f"tcp://127.0.0.1:{sim.port}", "--register", "30012")
    assert refused.returncode == 1
    assert "illegal_address at input 11+2: exception code 2 (illegal data address)" in refused.stderr
    bad_url = run("probe", "modbus", "udp://x", "--register", "30001")
    assert bad_url.returncode == 2 and "tcp://, rtu-tcp:// or rtu://" in bad_url.stderr


def _config_without_broker(tmp_path: Path, sim: Sim) -> Path:
    path = tmp_path / "tools.yaml"
    path.write_text(
        f"gateway: {{id: gw, state_dir: {tmp_path / 'state'}}}\n"
        "mqtt: {host: 127.0.0.1, tls: {enabled: false}}\n"
        "devices:\n" + DEVICE.format(port=sim.port)
    )
    return path
