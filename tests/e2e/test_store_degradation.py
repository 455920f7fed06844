"""The agent with its store at the size bound while the broker is away: it keeps running,
compacts before it drops, and tells the cloud exactly what it did."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import (
    AgentProcess,
    RawCollector,
    agent_config,
    modbus_device,
    running_sim,
)

from agent.store import read_stats
from agent.testing import Mosquitto

pytestmark = pytest.mark.e2e


def test_a_full_store_degrades_and_reports_while_the_agent_runs(
    tmp_path: Path, numba_cache: Path
) -> None:
    broker = Mosquitto(persistent=True)
    with broker, RawCollector(broker.host, broker.port, "#") as cloud, \
            running_sim(tmp_path, "sim") as sim:
        broker.stop()  # the link is down: everything stays in the store
        config = agent_config(tmp_path, broker, modbus_device("m1", sim.port, poll_interval_s=0.05),
                              window_s=0.05, max_bytes="64 KiB")
        with AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:
            agent.wait_logged("store_degraded", timeout_s=60)
            stats = read_stats(tmp_path / "state" / "events.sqlite")
            assert stats.compacted > 0 and stats.bytes <= 64 * 1024
            assert agent.process.poll() is None, "the agent keeps running"
            broker.start()
            received = cloud.wait_for(
                lambda m: any(r.kind == "store_health" for r in m), timeout_s=60,
                what="the store_health report")
            assert agent.terminate() == 0
    report = next(r for r in received if r.kind == "store_health")
    assert report.data["compacted"] > 0 and report.device == "_gateway"
    merged = [r for r in received if r.kind == "window" and r.data.get("windows", 1) > 1]
    assert merged, "old windows arrive merged, not lost"
    assert all(r.data["end_ns"] > r.data["start_ns"] for r in merged)
