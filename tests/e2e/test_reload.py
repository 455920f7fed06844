"""SIGHUP re-reads the configuration of a running agent (real plc-sims, Mosquitto and
`edge-agent run`): what did not change keeps running, with its open windows; nothing
buffered is lost; an invalid file changes nothing."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
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

from agent.testing import Mosquitto, wait_until

pytestmark = pytest.mark.e2e

TOPICS = "lab/gw-e2e/#"
SENTINEL_TOPIC = "lab/gw-e2e/_end-of-test/end"


def of(messages: list[Received], kind: str, device: str) -> list[Received]:
    return [m for m in messages if not is_sentinel(m) and m.kind == kind and m.device == device]


def up(device: str) -> object:
    return lambda ms: any(m.data.get("status") == "up" for m in of(ms, "device_health", device))


def assert_no_gap(messages: list[Received]) -> None:
    seqs = sorted({m.seq for m in messages})
    assert seqs == list(range(1, seqs[-1] + 1)), "a seq is missing"


def test_reload_adding_a_device_keeps_the_open_window_of_the_first(
    tmp_path: Path, mosquitto: Mosquitto, sims: list[Sim], numba_cache: Path
) -> None:
    one = modbus_device("compressor-1", sims[0].port)
    two = modbus_device("compressor-2", sims[1].port)
    config = agent_config(tmp_path, mosquitto, one, window_s=3600)
    with RawCollector(mosquitto.host, mosquitto.port, TOPICS) as collector, \
            AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:
        collector.wait_for(up("compressor-1"), timeout_s=60, what="compressor-1 up")
        agent_config(tmp_path, mosquitto, one + "\n" + two, window_s=3600)
        reload_ns = time.time_ns()
        agent.signal(signal.SIGHUP)
        reloaded = agent.wait_logged("config_reloaded")
        assert reloaded["kept"] == ["compressor-1"]
        assert reloaded["started"] == ["compressor-2"] and reloaded["stopped"] == []
        collector.wait_for(up("compressor-2"), timeout_s=30, what="compressor-2 up")
        # Let the open window of compressor-1 span a known second after the reload: what
        # is checked below is that its samples from both sides end up in one window.
        wait_until(lambda: time.time_ns() > reload_ns + 1_000_000_000, timeout_s=5,
                   what="a second after the reload")
        received = stop_and_collect(agent, mosquitto, collector, SENTINEL_TOPIC)

    [window] = of(received, "window", "compressor-1")  # not flushed by the reload
    data = window.data
    assert data["start_ns"] < reload_ns and data["end_ns"] > reload_ns + 1_000_000_000
    n = data["tags"]["active_power_w"]["n"]
    polls_possible = (data["end_ns"] - data["start_ns"]) / 0.2e9 + 1
    assert n >= 2 and n >= 0.5 * polls_possible, (n, polls_possible)
    assert of(received, "window", "compressor-2"), "the new device's window is sent at stop"
    assert len(of(received, "device_health", "compressor-1")) == 1, "kept, never restarted"
    assert_no_gap(received)
    assert agent.logged("agent_started")[0]["config_sha256"] != reloaded["config_sha256"][:12]


def test_invalid_configuration_is_rejected_and_the_agent_runs_on(
    tmp_path: Path, mosquitto: Mosquitto, sims: list[Sim], numba_cache: Path
) -> None:
    config = agent_config(tmp_path, mosquitto, modbus_device("compressor-1", sims[0].port),
                          window_s=0.5)
    good = config.read_text()
    with RawCollector(mosquitto.host, mosquitto.port, TOPICS) as collector, \
            AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:
        collector.wait_for(lambda ms: of(ms, "window", "compressor-1"), timeout_s=60,
                           what="a first window")
        broken = good.replace("type: float32", "type: flaot32", 1).replace(
            "poll_interval_s: 0.2", "poll_interval_s: -1")
        config.write_text(broken)
        agent.signal(signal.SIGHUP)
        rejected = agent.wait_logged("config_reload_rejected", count=2)
        problems = [line["problem"] for line in agent.logged("config_reload_rejected")]
        assert len(problems) == 2, problems
        assert any("'flaot32' is not one of" in p for p in problems)
        assert any("poll_interval_s" in p for p in problems)
        assert rejected["level"] == "error"
        # Files that once stopped the agent on SIGHUP (the parser's own exceptions).
        hostile = [good.replace("devices:", "x: !!python/object/apply:os.getpid []\ndevices:"),
                   good.replace("gateway:", "gateway:\n  site: \"a\x07b\"", 1),
                   good + "deep: " + "[" * 1000 + "]" * 1000 + "\n"]
        for count, text in enumerate(hostile, start=3):
            config.write_text(text)
            agent.signal(signal.SIGHUP)
            agent.wait_logged("config_reload_rejected", count=count)
        assert agent.process.poll() is None
        assert not agent.logged("config_reloaded")
        after = len(collector.snapshot())
        collector.wait_for(lambda ms: len(of(ms[after:], "window", "compressor-1")) >= 2,
                           timeout_s=30, what="windows after the rejected reload")
        received = stop_and_collect(agent, mosquitto, collector, SENTINEL_TOPIC)
    assert_no_gap(received)


def test_mqtt_change_recreates_the_uplink_without_losing_an_event(
    tmp_path: Path, mosquitto: Mosquitto, sims: list[Sim], numba_cache: Path
) -> None:
    config = agent_config(tmp_path, mosquitto, modbus_device("compressor-1", sims[0].port),
                          window_s=0.3)
    with RawCollector(mosquitto.host, mosquitto.port, TOPICS) as collector, \
            AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:
        collector.wait_for(lambda ms: len(of(ms, "window", "compressor-1")) >= 2,
                           timeout_s=60, what="windows before the reload")
        config.write_text(config.read_text().replace("username: e2e,",
                                                     "username: e2e, keepalive_s: 20,"))
        agent.signal(signal.SIGHUP)
        reloaded = agent.wait_logged("config_reloaded")
        assert reloaded["mqtt_restarted"] and reloaded["kept"] == ["compressor-1"]
        assert len(agent.logged("mqtt_connected")) >= 1
        agent.wait_logged("mqtt_connected", count=2)
        after = len(collector.snapshot())
        collector.wait_for(lambda ms: len(of(ms[after:], "window", "compressor-1")) >= 2,
                           timeout_s=30, what="windows after the reload")
        received = stop_and_collect(agent, mosquitto, collector, SENTINEL_TOPIC)
    assert_no_gap(received)
    assert [s.status for _, s, _ in collector.statuses].count("online") >= 2
