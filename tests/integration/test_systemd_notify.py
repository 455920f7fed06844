"""`agent.service.systemd.Notifier` against real AF_UNIX datagram sockets, as systemd binds them."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from agent.service.systemd import Notifier


def test_abstract_socket_name_starting_with_at() -> None:
    name = f"edge-agent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(b"\0" + name.encode())
        receiver.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.ready("running")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=running"
        notifier.close()


def test_reloading_carries_the_monotonic_time(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        assert notifier.reloading()
        lines = receiver.recv(4096).decode().splitlines()
        notifier.close()
    assert lines[0] == "RELOADING=1"
    usec = int(lines[1].removeprefix("MONOTONIC_USEC="))
    assert abs(usec - time.monotonic_ns() // 1000) < 5_000_000


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("running")
    assert notifier.watchdog_interval_s is None


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not notifier.notify("WATCHDOG=1")
    notifier.close()


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid_only() -> None:
    ours = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier(ours).watchdog_interval_s == 15.0
    assert Notifier({**ours, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 15.0
    assert Notifier({**ours, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval_s is None
    assert Notifier({**ours, "WATCHDOG_USEC": "0"}).watchdog_interval_s is None
    assert Notifier({**ours, "WATCHDOG_USEC": "soon"}).watchdog_interval_s is None
