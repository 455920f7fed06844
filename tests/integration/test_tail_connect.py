"""`edge-agent tail` says what it is doing when the broker is not there (real sockets)."""

from __future__ import annotations

import socket
import subprocess

from agent.testing import console_script, free_tcp_port


def tail(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([console_script("edge-agent"), "tail", "--host", "127.0.0.1",
                           "--port", str(port), "--timeout", "1", *args],
                          capture_output=True, text=True, timeout=30, check=False)


def test_a_refused_port_is_named_at_once() -> None:
    port = free_tcp_port()
    done = tail(port, "--no-tls")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"connecting to 127.0.0.1:{port} without TLS ...",
        f"cannot reach the broker at 127.0.0.1:{port} without TLS: Connection refused"]


def test_a_listener_that_never_answers_is_reported_with_a_hint() -> None:
    with socket.socket() as silent:  # accepts the TCP connection, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        plain = tail(port, "--no-tls")
        secure = tail(port)
    assert plain.returncode == 1 and secure.returncode == 1
    assert f"no MQTT answer from 127.0.0.1:{port} without TLS within 1 s" in plain.stderr
    assert "is it an MQTT broker" in plain.stderr
    assert f"127.0.0.1:{port} with TLS" in secure.stderr and "timed out" in secure.stderr
