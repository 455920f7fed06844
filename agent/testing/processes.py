"""Real processes for tests, benchmarks and the demo: Mosquitto, plc-sim, free ports, and a
TCP proxy to put between a client and a server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

from agent.testing.wait import wait_until

R = TypeVar("R")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's choice, never a fixed number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class TcpProxy:
    """A TCP proxy on a free port in front of `upstream_port`, a thread per direction of each
    connection. A subclass's `passes` sees every chunk (connection index, from the client or
    not) and says whether it goes on; `cut` breaks the newest connection, new ones are taken."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_tcp_port()
        self._upstream_port = upstream_port
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def passes(self, index: int, from_client: bool, data: bytes) -> bool:
        return True

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
                index = len(self._pairs)
                self._pairs.append((client, upstream))
                for source, target, from_client in ((client, upstream, True),
                                                    (upstream, client, False)):
                    threading.Thread(target=self._pipe, args=(source, target, index, from_client),
                                     daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, index: int,
              from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if self.passes(index, from_client, data):
                    target.sendall(data)

    def cut(self) -> None:
        for sock in self._pairs[-1]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for sock in [self._server, *(s for pair in self._pairs for s in pair)]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise FileNotFoundError(
            "mosquitto is not installed: `make test` installs it (apt-get install -y mosquitto)"
        )
    return found


def mosquitto_passwd_binary() -> str:
    found = shutil.which("mosquitto_passwd")
    if found is None:
        raise FileNotFoundError(
            "mosquitto_passwd is not installed (Debian ships it in the mosquitto package)"
        )
    return found


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """A TLS listener: the broker's certificate and key, and the CA its clients' certificates
    must come from (`agent.testing.tls.make_test_certificates` makes all three)."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False
    """Refuse a client without a certificate signed by `cafile`."""


class Mosquitto:
    """A Mosquitto broker of our own on a free loopback port; `stop()` and `start()` again at will.

    Anonymous plain TCP by default; `tls` makes its listener TLS, `users` (name -> password)
    requires a login. For tests and the demo, never the machine's own broker.
    """

    def __init__(
        self, port: int | None = None, *, persistent: bool = False, extra_config: str = "",
        tls: BrokerTls | None = None, users: Mapping[str, str] | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_tcp_port()
        self.tls = tls
        self._dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self._password_file = self._dir / "passwd"
        self.log_path = self._dir / "mosquitto.log"
        self.config_path = self._dir / "mosquitto.conf"
        # persistent: sessions and queued messages survive stop()/start(), as on a real broker.
        persistence = (
            f"persistence true\npersistence_location {self._dir}/\n" if persistent
            else "persistence false\n"
        )
        # Started as root, Mosquitto switches to the `mosquitto` user and can then read
        # neither its private directory (log, password file) nor a test's key files.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.config_path.write_text(
            user
            + f"listener {self.port} {self.host}\n"
            + self._tls_config(tls)
            + self._users_config(users)
            + persistence
            + f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            + extra_config
        )
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _tls_config(tls: BrokerTls | None) -> str:
        if tls is None:
            return ""
        return (
            f"cafile {tls.cafile}\ncertfile {tls.certfile}\nkeyfile {tls.keyfile}\n"
            f"require_certificate {'true' if tls.require_certificate else 'false'}\n"
        )

    def _users_config(self, users: Mapping[str, str] | None) -> str:
        if users is None:
            return "allow_anonymous true\n"
        for i, (name, password) in enumerate(users.items()):
            self._set_password(name, password, create=i == 0)
        self._password_file.chmod(0o600)
        return f"allow_anonymous false\npassword_file {self._password_file}\n"

    def _set_password(self, name: str, password: str, *, create: bool = False) -> None:
        """mosquitto_passwd: -c creates the file (the first user), -b takes the password
        from the command line."""
        subprocess.run([mosquitto_passwd_binary(), *(["-c"] if create else []), "-b",
                        str(self._password_file), name, password],
                       check=True, capture_output=True)

    def read_log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def start(self, timeout_s: float = 10.0) -> Self:
        self._process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the test run or demo is not its to take
        )

        def ready() -> bool:
            if self._process is not None and self._process.poll() is not None:
                log = self.log_path.read_text() if self.log_path.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}: {log}")
            return port_open(self.host, self.port)

        wait_until(ready, timeout_s=timeout_s, what=f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def reload(self) -> None:
        """SIGHUP: the broker reads its password and access-rule (`acl_file`) files again."""
        if self._process is not None:
            self._process.send_signal(signal.SIGHUP)

    def add_user(self, name: str, password: str) -> None:
        """A login the running broker takes from now on (made with `users`)."""
        self._set_password(name, password)
        self.reload()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def _as_envelope(msg: Any) -> tuple[str, Any]:
    from agent.events import decode

    return msg.topic, decode(msg.payload)


class MqttCollector(Generic[R]):
    """Subscribes to `topic` and keeps every message, by default decoded as an event envelope.

    `messages`: `record(message)` of each, in arrival order (paho's thread appends; read with
    `wait_for`). A `client_id` makes the session persistent: nothing published meanwhile is
    lost. Birth and will go to `statuses` as (topic, Presence, retained).
    """

    def __init__(
        self, host: str, port: int, topic: str = "#", *, client_id: str | None = None,
        ca_file: Path | None = None, username: str | None = None, password: str | None = None,
        record: Callable[[Any], R] = _as_envelope,  # type: ignore[assignment]
    ) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from agent.uplink.presence import PRESENCE_KIND, Presence, decode_presence

        self.messages: list[R] = []
        self.statuses: list[tuple[str, Presence, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or "",
            clean_session=client_id is None,
        )
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        if ca_file is not None:
            client.tls_set(ca_certs=str(ca_file))
        if username is not None:
            client.username_pw_set(username, password)

        def on_connect(c: mqtt.Client, *_: object) -> None:
            c.subscribe(topic, qos=1)

        def on_subscribe(*_: object) -> None:
            self._subscribed.set()

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            if msg.topic.rsplit("/", 1)[-1] == PRESENCE_KIND:
                status = decode_presence(msg.payload)
                with self._lock:
                    self.statuses.append((msg.topic, status, bool(msg.retain)))
                return
            with self._lock:
                self.messages.append(record(msg))

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        self._client = client
        self._host, self._port = host, port

    def __enter__(self) -> Self:
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout=10):
            raise TimeoutError(f"no SUBACK from {self._host}:{self._port}")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def snapshot(self) -> list[R]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, predicate: Callable[[list[R]], bool], *, timeout_s: float,
                 what: str) -> list[R]:
        def check() -> list[R] | None:
            snap = self.snapshot()
            return snap if predicate(snap) else None

        result = wait_until(check, timeout_s=timeout_s, what=what)
        assert result is not None
        return result

    def wait_for_status(self, status: str, *, timeout_s: float) -> tuple[str, Any, bool]:
        """The first status message saying `status` ("online" or "offline"), waiting for it."""
        def find() -> tuple[str, Any, bool] | None:
            with self._lock:
                return next((m for m in self.statuses if m[1].status == status), None)

        found = wait_until(find, timeout_s=timeout_s, what=f"a status message {status!r}")
        assert found is not None
        return found


def console_script(name: str) -> str:
    """A console script of this installation (the venv the tests or the demo run in)."""
    import sys

    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed: run `make venv`")
    return found


def start_plc_sim(*args: str, stderr: Any = None, timeout_s: float = 20.0,
                  protocol: str = "modbus-tcp") -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start `plc-sim ARGS` on a port of its choosing; return the process and its listening line.

    The line (a dict) has `port`, `units` (unit id -> kind), `endpoints` by protocol and, with
    `--control-port 0`, `control` (`PlcSimControl.of`). `protocol="opcua"`: the OPC UA line.
    """
    import json

    process = subprocess.Popen(
        [console_script("plc-sim"), "--modbus-port", "0", *args],
        stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"plc-sim exited with {process.wait()} before listening")
        try:
            info = json.loads(line)
        except ValueError:
            continue
        if (isinstance(info, dict) and info.get("event") == "listening"
                and info.get("protocol", "modbus-tcp") == protocol):
            return process, info
    process.kill()
    raise TimeoutError(f"plc-sim did not say it was listening within {timeout_s} s")


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after `timeout_s`; the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


class PlcSimControl:
    """The fault control channel of a running `plc-sim` (started with `--control-port 0`).

    `of(info)` takes `start_plc_sim`'s line; `set_fault(kind, **options)` returns once applied
    (kinds: `plc_sim.link_faults.Fault`; `endpoint=` narrows one), `clear()` ends any fault,
    `opcua(name)` applies an OPC UA fault; a refusal raises ValueError.
    """

    def __init__(self, host: str, port: int, timeout_s: float = 10.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        self._reader = self._sock.makefile("rb")

    @classmethod
    def of(cls, info: Mapping[str, Any]) -> PlcSimControl:
        control = info.get("control")
        if not control:
            raise ValueError("plc-sim was started without --control-port")
        return cls(str(control["host"]), int(control["port"]))

    def set_fault(self, kind: str, **options: Any) -> dict[str, Any]:
        return self._ask({"fault": kind, **options})

    def clear(self, **options: Any) -> dict[str, Any]:
        return self.set_fault("none", **options)

    def opcua(self, fault: str) -> dict[str, Any]:
        """An OPC UA fault by name (`plc_sim.control.OPCUA_FAULTS`), once in force."""
        return self._ask({"opcua": fault})

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        import json

        self._sock.sendall(json.dumps(request).encode() + b"\n")
        line = self._reader.readline()
        if not line:
            raise ConnectionError("plc-sim closed the control channel")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise ValueError(f"plc-sim refused the fault: {answer.get('error')}")
        return answer

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
