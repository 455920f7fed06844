"""OPC UA security (SignAndEncrypt with a pinned server certificate, refusal of an unpinned one)
and the technician's commands `edge-agent browse` and `edge-agent opcua trust`, run as
processes against firmware-sim's server with security switched on.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.acquire.backoff import Backoff
from agent.acquire.task import DeviceHealth, supervise_device
from agent.events import DEVICE_HEALTH, Event
from agent.testing import (
    RecordingDetector,
    console_script,
    start_plc_sim,
    stop_process,
    wait_until_async,
)
from drivers.opcua import OpcUaDevice, OpcUaDriver, pki
from drivers.opcua.trust import fetch_server_certificate
from plc_sim.opcua_server import OpcUaSimServer
from plc_sim.scenarios import SCENARIOS, ScenarioOptions

pytestmark = pytest.mark.asyncio(loop_scope="module")

PASSWORD = "pw-never-in-an-event"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure_sim(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OpcUaSimServer]:
    machine = SCENARIOS["compressor"].factory(ScenarioOptions())
    server = OpcUaSimServer("compressor", machine.trace_record, advance=machine.advance,
                            tick_s=0.05, security=True, users={"edge": PASSWORD},
                            pki_dir=tmp_path_factory.mktemp("server-pki"))
    await server.start()
    yield server
    await server.stop()


async def edge_agent(*args: str, stdin: str = "") -> tuple[int, str, str]:
    """`edge-agent ARGS` as a process (never blocking the loop the server runs on)."""
    process = await asyncio.create_subprocess_exec(
        console_script("edge-agent"), *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def secure_device(endpoint: str, node: str, password_file: Path) -> OpcUaDevice:
    return OpcUaDevice.model_validate({
        "name": "comp", "protocol": "opcua", "endpoint": endpoint, "timeout_s": 2,
        "publishing_interval_s": 0.1,
        "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "username": "edge",
                     "password_file": str(password_file)},
        "tags": [{"name": "power", "node": node, "sampling_interval_s": 0.05}]})


async def test_unpinned_server_is_refused_then_pinned_server_delivers_encrypted(
        secure_sim: OpcUaSimServer, tmp_path: Path) -> None:
    events: list[Event] = []
    keep = RecordingDetector()
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    config = secure_device(secure_sim.endpoint, secure_sim.node_id("active_power_w"),
                           password_file)
    task = asyncio.create_task(supervise_device(
        OpcUaDriver(config, tmp_path), keep, events.extend, Backoff(0.2, 0.5),
        DeviceHealth("comp")))
    try:
        await wait_until_async(lambda: events, timeout_s=15, what="a health event")
        refused = events[0].data
        assert (refused["status"], refused["reason"]) == ("down", "security")
        assert "not trusted" in refused["detail"]
        assert f"edge-agent opcua trust -c CONFIG {secure_sim.endpoint}" in refused["detail"]
        # The client identity was made on first start, its key private to the agent.
        key = tmp_path / "pki" / pki.KEY_FILE
        assert (tmp_path / "pki" / pki.CERT_FILE).exists() and key.stat().st_mode & 0o077 == 0

        code, out, err = await edge_agent("opcua", "trust", "--state-dir", str(tmp_path),
                                          secure_sim.endpoint, stdin="y\n")
        assert code == 0, err
        fingerprint = refused["detail"].split("SHA-256 ")[1].split(")")[0]
        assert f"SHA-256     {fingerprint}" in out
        assert "Basic256Sha256/SignAndEncrypt" in out

        await wait_until_async(lambda: len(keep.batches) >= 3, timeout_s=15,
                               what="values over the encrypted channel")
        health = [(e.data["status"], e.data["reason"]) for e in events if e.kind == DEVICE_HEALTH]
        assert health == [("down", "security"), ("up", "")]
    finally:
        task.cancel()


async def test_wrong_password_is_a_security_event_that_never_shows_the_password(
        secure_sim: OpcUaSimServer, tmp_path: Path) -> None:
    server_cert = (await fetch_server_certificate(secure_sim.endpoint)).cert
    pki.pin(server_cert, tmp_path / "pki")
    password_file = tmp_path / "password"
    password_file.write_text("not-" + PASSWORD)
    events: list[Event] = []
    config = secure_device(secure_sim.endpoint, secure_sim.node_id("active_power_w"),
                           password_file)
    task = asyncio.create_task(supervise_device(
        OpcUaDriver(config, tmp_path), RecordingDetector(), events.extend, Backoff(0.2, 0.5),
        DeviceHealth("comp")))
    try:
        await wait_until_async(lambda: events, timeout_s=15, what="a health event")
    finally:
        task.cancel()
    refused = events[0].data
    assert (refused["status"], refused["reason"]) == ("down", "security")
    assert "BadUserAccessDenied" in refused["detail"]
    assert PASSWORD not in str(refused)


async def test_trust_asks_and_pins_nothing_when_the_answer_is_no(
        secure_sim: OpcUaSimServer, tmp_path: Path) -> None:
    code, out, err = await edge_agent("opcua", "trust", "--state-dir", str(tmp_path),
                                      secure_sim.endpoint, stdin="\n")
    assert code == 1
    assert "Trust this certificate? [y/N]" in out and "nothing changed" in err
    assert not (tmp_path / "pki" / "trusted").exists()


async def test_browse_of_a_secure_only_server_says_how_to_give_it_security(
        secure_sim: OpcUaSimServer) -> None:
    code, _, err = await edge_agent("browse", secure_sim.endpoint)
    assert code == 1
    assert "the server requires security: add -c CONFIG --device NAME" in err


async def test_browse_prints_the_tree_and_a_ready_tag_list(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        console_script("plc-sim"), "--modbus-port", "0", "--opcua-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        info: dict[str, str] = {}
        while info.get("protocol") != "opcua":
            info = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        endpoint = info["endpoint"]
        code, out, err = await edge_agent("browse", endpoint, "--depth", "2")
        assert code == 0, err
        assert "└─ 2:compressor  [ns=2;s=compressor]  Object" in out
        assert "2:active_power_w  [ns=2;s=compressor.active_power_w]  Double = " in out
        assert "2:firmware  [ns=2;s=compressor.firmware]  String = '1.2'" in out
        assert "not shown (browse it with --node i=2253)" in out

        code, out, err = await edge_agent("browse", endpoint, "--yaml",
                                          "--select", "ns=2;s=compressor.active_power_w",
                                          "--select", "ns=2;s=compressor.running",
                                          "--select", "ns=2;s=compressor.power_history_w",
                                          "--select", "ns=2;s=compressor.vibration_waveform_mm_s")
        assert code == 0, err
        assert out.startswith("tags:\n  - name: active_power_w\n"
                              '    node: "ns=2;s=compressor.active_power_w"\n'
                              "    mode: subscribe\n")
        # Issue 20: the default would keep 64 of the capture's 1,024 samples.
        assert ('    node: "ns=2;s=compressor.vibration_waveform_mm_s"\n'
                "    mode: subscribe\n    max_array_length: 1024\n"
                "    # Double[1024], now [") in out
        assert out.count("max_array_length") == 1  # 8 values: the default keeps them
        # The list drops into a device's configuration as it is.
        tags = [line for line in out.splitlines() if not line.lstrip().startswith("#")]
        config = tmp_path / "c.yaml"
        config.write_text(
            "gateway: {id: gw, state_dir: " + str(tmp_path) + "}\n"
            "mqtt: {host: 127.0.0.1, tls: {enabled: false}}\n"
            "devices:\n  - name: comp\n    protocol: opcua\n    endpoint: " + endpoint + "\n"
            + "\n".join("    " + line for line in tags) + "\n")
        code, out, err = await edge_agent("check", "-c", str(config))
        assert code == 0, err
        assert "  running: ns=2;s=compressor.running (subscribe" in out
    finally:
        process.terminate()
        await process.wait()


NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another user: needs root")

_CONNECT_AS = """
import asyncio, json, os, sys
from pathlib import Path
from drivers.errors import DeviceError
from drivers.opcua import OpcUaDevice, OpcUaDriver
import drivers.opcua.client, drivers.opcua.security
# Imported first: this Python's standard library may lie where only root can read.
os.setgroups([]); os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[3]))

async def main():
    driver = OpcUaDriver(OpcUaDevice.model_validate_json(sys.argv[1]), Path(sys.argv[2]))
    try:
        await driver.connect()
        return {"reason": "connected", "detail": ""}
    except DeviceError as exc:
        return {"reason": exc.reason, "detail": exc.detail}
    finally:
        await driver.close()

print(json.dumps(asyncio.run(main())))
"""


async def connect_as(uid: int, config: OpcUaDevice, state_dir: Path) -> dict[str, str]:
    """The driver's connect, in a process of user `uid` (the agent under its own user)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CONNECT_AS, config.model_dump_json(), str(state_dir), str(uid),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd="/")
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    answer: dict[str, str] = json.loads(out)
    return answer


@pytest.fixture
def agent_state_dir() -> Iterator[Path]:
    """A state directory of the agent's user (nobody), where that user can reach it (not
    under pytest's root-only folder), as systemd's StateDirectory= makes it."""
    path = Path(tempfile.mkdtemp(prefix="edge-agent-state-"))
    os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path)


def anonymous_secure_device(endpoint: str, node: str) -> OpcUaDevice:
    return OpcUaDevice.model_validate({
        "name": "comp", "protocol": "opcua", "endpoint": endpoint, "timeout_s": 2,
        "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt"},
        "tags": [{"name": "power", "node": node}]})


@as_root
async def test_a_pki_the_agent_may_not_write_is_a_permission_problem_not_unreachable(
        secure_sim: OpcUaSimServer, agent_state_dir: Path) -> None:
    """Field trial (issue 20): `opcua trust` as root made pki/ root's, 0755; the agent, under
    its own user, then failed on client-key.tmp and was reported `unreachable`."""
    (agent_state_dir / "pki" / "trusted").mkdir(parents=True, mode=0o755)
    config = anonymous_secure_device(secure_sim.endpoint, secure_sim.node_id("active_power_w"))
    answer = await connect_as(NOBODY, config, agent_state_dir)
    assert answer["reason"] == "permission", answer
    pki_dir = agent_state_dir / "pki"
    assert f"cannot write the gateway's certificate {pki_dir}/client-key.tmp" in answer["detail"]
    assert f"{pki_dir} belongs to root, the agent runs as nobody" in answer["detail"]
    assert f"`sudo chown -R nobody {pki_dir}`" in answer["detail"]


@as_root
async def test_trust_as_root_gives_the_pki_to_the_agents_user(
        secure_sim: OpcUaSimServer, agent_state_dir: Path) -> None:
    pki_dir = agent_state_dir / "pki"
    (pki_dir / "trusted").mkdir(parents=True, mode=0o755)  # as an older version left it
    code, out, err = await edge_agent("opcua", "trust", "--state-dir", str(agent_state_dir),
                                      "--yes", secure_sim.endpoint)
    assert code == 0, err
    assert f"{pki_dir} belongs to nobody, the owner of {agent_state_dir}" in out
    [pinned] = (pki_dir / "trusted").iterdir()
    for path, mode in ((pki_dir, 0o700), (pki_dir / "trusted", 0o700), (pinned, 0o600)):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, mode), path
    # The agent, as its own user, makes its certificate there and gets as far as the login
    # (the server refuses anonymous sessions).
    config = anonymous_secure_device(secure_sim.endpoint, secure_sim.node_id("active_power_w"))
    answer = await connect_as(NOBODY, config, agent_state_dir)
    assert answer["reason"] == "security", answer
    assert "not trusted" not in answer["detail"]
    assert (pki_dir / pki.KEY_FILE).stat().st_uid == NOBODY


@pytest.fixture
def traced_sim(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """plc-sim serving OPC UA, every value it served in `tmp_path/trace.jsonl`."""
    with open(tmp_path / "plc-sim.log", "w") as log:
        sim, info = start_plc_sim("--opcua-port", "0", "--trace", str(tmp_path / "trace.jsonl"),
                                  stderr=log, protocol="opcua")
    yield sim, info
    stop_process(sim)


async def test_read_prints_an_opcua_devices_values_status_codes_and_times(
        tmp_path: Path, traced_sim: tuple[subprocess.Popen[str], dict[str, Any]]) -> None:
    """Issue 20: `edge-agent read --device <an OPC UA device>` said `no Modbus device named`."""
    sim, info = traced_sim
    trace = tmp_path / "trace.jsonl"
    try:
        config = tmp_path / "c.yaml"
        config.write_text(
            "gateway: {id: gw, state_dir: " + str(tmp_path / "state") + "}\n"
            "mqtt: {host: 127.0.0.1, tls: {enabled: false}}\n"
            "devices:\n  - name: oven\n    protocol: opcua\n"
            f"    endpoint: {info['endpoint']}\n    tags:\n"
            '      - {name: power, node: "ns=2;s=compressor.active_power_w", unit: W}\n'
            '      - {name: state, node: "ns=2;s=compressor.state", mode: poll}\n'
            '      - {name: firmware, browse_path: "2:compressor/2:firmware", mode: poll}\n'
            '      - {name: running, node: "ns=2;s=compressor.running"}\n'
            '      - {name: wave, node: "ns=2;s=compressor.vibration_waveform_mm_s"}\n'
            '      - {name: ghost, node: "ns=2;s=compressor.no_such_value"}\n')
        code, out, err = await edge_agent("read", "-c", str(config), "--device", "oven")
    finally:
        stop_process(sim)
    assert code == 1, err  # a refused tag, as for Modbus
    assert out.startswith(f"device oven ({info['endpoint']}):\n  tag ")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    served = [json.loads(line) for line in trace.read_text().splitlines()]
    power = rows["power"]
    assert power[1] == "ns=2;s=compressor.active_power_w" and power[-1] == "W"
    assert any(float(power[2]) == pytest.approx(row["active_power_w"], rel=1e-14)
               for row in served)
    assert power[3] == "Good"
    source, server = (datetime.fromisoformat(t) for t in power[4:6])
    assert abs(server - source) < timedelta(seconds=5)
    assert int(rows["state"][2]) in {row["state"] for row in served}
    assert rows["firmware"][2] == "'1.2'"
    assert rows["running"][2] in ("0", "1")
    assert rows["wave"][2] == "[1024]"
    assert rows["ghost"][2:4] == ["error:", "no"] and "BadNodeIdUnknown" in rows["ghost"]
    assert "device oven: 1 tag(s) refused by the server: ghost" in err
    assert ("device oven: warning: tag wave: arrays of 1024 values, the agent keeps the first "
            "64 (max_array_length): set max_array_length: 1024 to keep them all") in err

    code, _, err = await edge_agent("read", "-c", str(config), "--device", "press")
    assert code == 2 and "no device named 'press' (configured: oven)" in err


@as_root
async def test_a_certificate_made_by_read_as_root_is_the_agents(
        secure_sim: OpcUaSimServer, agent_state_dir: Path) -> None:
    """`sudo edge-agent read` (or `browse --device`) makes the gateway's certificate when it
    is missing: in the agent's folder, it must be the agent's too."""
    config = agent_state_dir / "config.yaml"
    config.write_text(
        f"gateway: {{id: gw, state_dir: {agent_state_dir}}}\n"
        "mqtt: {host: 127.0.0.1, tls: {enabled: false}}\n"
        "devices:\n  - name: comp\n    protocol: opcua\n"
        f"    endpoint: {secure_sim.endpoint}\n"
        "    security: {policy: Basic256Sha256, mode: SignAndEncrypt}\n"
        f'    tags: [{{name: power, node: "{secure_sim.node_id("active_power_w")}"}}]\n')
    code, _, err = await edge_agent("read", "-c", str(config))
    assert code == 1 and "security" in err  # the server's certificate is not pinned
    for path in (agent_state_dir / "pki", agent_state_dir / "pki" / pki.KEY_FILE,
                 agent_state_dir / "pki" / pki.CERT_FILE):
        assert path.stat().st_uid == NOBODY, path
