"""`heartbeat` events and `edge-agent status` against a running agent (real processes)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import (
    AgentProcess,
    RawCollector,
    Received,
    Sim,
    agent_config,
    modbus_device,
    running_sim,
)

from agent.testing import Mosquitto, console_script, free_tcp_port

pytestmark = pytest.mark.e2e


def status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([console_script("edge-agent"), "status", "-c", str(config), *args],
                          capture_output=True, text=True, check=False, timeout=30)


def heartbeats(messages: list[Received]) -> list[Received]:
    return [m for m in messages if m.kind == "heartbeat"]


def test_heartbeats_and_status_command_report_the_running_agent(
    tmp_path: Path, mosquitto: Mosquitto, numba_cache: Path
) -> None:
    with running_sim(tmp_path, "sim") as sim:
        run_and_check(tmp_path, mosquitto, numba_cache, sim)


def run_and_check(tmp_path: Path, mosquitto: Mosquitto, numba_cache: Path, sim: Sim) -> None:
    devices = (modbus_device("compressor-1", sim.port) + "\n"
               + modbus_device("dead-meter", free_tcp_port()))
    config = agent_config(tmp_path, mosquitto, devices)
    metrics_port = free_tcp_port()
    # A rule that runs only while the compressor is overloaded, which it never is: the
    # status names it as waiting.
    config.write_text(config.read_text()
                      + f"\nhealth: {{heartbeat_s: 0.5, prometheus_port: {metrics_port}}}\n"
                      + "machines:\n  - {name: compressor, device: compressor-1, "
                        "power_tag: active_power_w, idle_above_w: 500, running_above_w: 5000, "
                        "overload_above_w: 50000}\n"
                      + "detectors:\n  - {device: compressor-1, kind: zscore, "
                        "name: overload-temp, tags: [discharge_temp_c], "
                        "while_states: [overload]}\n")
    sha = hashlib.sha256(config.read_bytes()).hexdigest()

    with RawCollector(mosquitto.host, mosquitto.port, "lab/gw-e2e/_gateway/#") as collector, \
            AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:

        def settled(ms: list[Received]) -> bool:
            beats = heartbeats(ms)
            return any(b.data["reason"] == "periodic"
                       and b.data["devices"]["compressor-1"]["status"] == "up"
                       and b.data["devices"]["dead-meter"]["status"] == "down"
                       and b.data["uplink"]["state"] == "connected" for b in beats)

        received = collector.wait_for(settled, timeout_s=60, what="a heartbeat of a settled agent")
        beats = heartbeats(received)
        assert beats[0].data["reason"] == "start"
        assert any(b.data["reason"] == "change" for b in beats), "a status change is sent at once"
        last = beats[-1].data
        assert last["config_sha256"] == sha and last["version"]
        assert last["devices"]["dead-meter"]["reason"] == "unreachable"
        assert last["process"]["rss_bytes"] > 0 and last["process"]["cpu_s"] > 0
        assert last["store"]["last_seq"] >= 1 and "dropped" in last["store"]

        socket_path = tmp_path / "state" / "status.sock"
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600

        shown = status(config)
        assert shown.returncode == 0, shown.stderr
        assert "gw-e2e" in shown.stdout and "connected" in shown.stdout
        assert "compressor-1" in shown.stdout and "down (unreachable)" in shown.stdout
        [line] = [x for x in shown.stdout.splitlines() if "compressor-1" in x]
        assert line.endswith("; waiting for compressor in overload: overload-temp")

        raw = status(config, "--json")
        assert raw.returncode == 0, raw.stderr
        document = json.loads(raw.stdout)
        assert document["pid"] == agent.process.pid
        assert document["config_sha256"] == sha
        assert document["devices"]["compressor-1"]["status"] == "up"
        assert document["paused"] == {"compressor-1": {"overload-temp": "compressor in overload"}}

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            metrics = r.read().decode().splitlines()
        assert 'edge_agent_device_up{device="compressor-1"} 1.0' in metrics
        assert 'edge_agent_device_up{device="dead-meter"} 0.0' in metrics
        assert 'edge_agent_uplink_state{state="connected"} 1.0' in metrics
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/", timeout=10)
        assert missing.value.code == 404

        assert agent.terminate() == 0

    assert not socket_path.exists(), "the socket is removed at stop"
    gone = status(config)
    assert gone.returncode == 1
    assert "not running" in gone.stderr and "Traceback" not in gone.stderr


def test_state_dir_is_private_and_made_even_with_the_store_elsewhere(
    tmp_path: Path, mosquitto: Mosquitto, sims: list[Sim], numba_cache: Path
) -> None:
    """Under umask 000 the agent's folder and files are still its own (0700/0600); with
    `store.path` outside `state_dir` the folder is still made, so `status` reaches it."""
    config = agent_config(tmp_path, mosquitto, modbus_device("compressor-1", sims[0].port))
    outside = tmp_path / "elsewhere" / "events.sqlite"
    config.write_text(config.read_text().replace("store: {", f"store: {{path: {outside}, "))
    state = tmp_path / "state"
    old = os.umask(0)
    try:
        agent = AgentProcess(config, tmp_path / "agent.log", numba_cache)
    finally:
        os.umask(old)
    with agent:
        agent.wait_logged("mqtt_connected")
        done = status(config)
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert stat.S_IMODE(outside.stat().st_mode) == 0o600
        assert stat.S_IMODE(outside.parent.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.lstat().st_mode) & 0o077 == 0 for p in state.iterdir())
