"""`edge-agent run` under a service manager: the sd_notify protocol spoken to a real AF_UNIX
datagram socket standing in for systemd's `$NOTIFY_SOCKET`."""

from __future__ import annotations

import itertools
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import AgentProcess, agent_config, modbus_device

from agent.testing import Mosquitto, free_tcp_port

pytestmark = pytest.mark.e2e

WATCHDOG_USEC = 400_000
"""The unit's WatchdogSec, shortened: pings are due every 0.2 s."""


class FakeSystemd:
    """The receiving end of `$NOTIFY_SOCKET`: every datagram, with when it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[tuple[float, dict[str, str]]] = []

    def wait_for(self, key: str, value: str, timeout_s: float) -> float:
        """Receive until a message holds `key=value`; the monotonic time it arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {key}={value} within {timeout_s} s; got {self.received}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            arrived = time.monotonic()
            self.received.append((arrived, fields))
            if fields.get(key) == value:
                return arrived

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    manager = FakeSystemd(tmp_path / "notify.sock")
    yield manager
    manager.close()


def test_ready_then_watchdog_pings_then_stopping(
    tmp_path: Path, mosquitto: Mosquitto, fake_systemd: FakeSystemd, numba_cache: Path
) -> None:
    config = agent_config(tmp_path, mosquitto, modbus_device("nobody-home", free_tcp_port()))
    env = {"NOTIFY_SOCKET": str(fake_systemd.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    with AgentProcess(config, tmp_path / "agent.log", numba_cache, env) as agent:
        fake_systemd.wait_for("READY", "1", timeout_s=60)
        ready = fake_systemd.received[-1][1]
        assert "1 devices" in ready["STATUS"]
        # Ready only once the store is open and the device and uplink tasks run.
        assert agent.logged("agent_started") and agent.logged("mqtt_connecting")

        pings = []
        for _ in range(6):
            pings.append(fake_systemd.wait_for("WATCHDOG", "1", timeout_s=5))
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        period = WATCHDOG_USEC / 2 / 1e6
        assert all(0.5 * period < gap < 2.5 * period for gap in gaps), gaps
        assert sum(gaps) / len(gaps) == pytest.approx(period, rel=0.3)

        agent.signal(signal.SIGTERM)
        fake_systemd.wait_for("STOPPING", "1", timeout_s=10)
        assert agent.process.wait(timeout=10) == 0


def test_watchdog_meant_for_another_process_is_not_pinged(
    tmp_path: Path, mosquitto: Mosquitto, fake_systemd: FakeSystemd, numba_cache: Path
) -> None:
    config = agent_config(tmp_path, mosquitto, modbus_device("nobody-home", free_tcp_port()))
    env = {"NOTIFY_SOCKET": str(fake_systemd.path), "WATCHDOG_USEC": str(WATCHDOG_USEC),
           "WATCHDOG_PID": "1"}
    with AgentProcess(config, tmp_path / "agent.log", numba_cache, env) as agent:
        fake_systemd.wait_for("READY", "1", timeout_s=60)
        agent.signal(signal.SIGTERM)
        fake_systemd.wait_for("STOPPING", "1", timeout_s=10)
        assert agent.process.wait(timeout=10) == 0
    assert not [f for _, f in fake_systemd.received if "WATCHDOG" in f]
    assert not agent.logged("systemd_watchdog_enabled")
