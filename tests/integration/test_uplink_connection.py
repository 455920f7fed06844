"""The uplink's connection against real brokers and broken peers: TLS, credentials, birth and
will, and the faults an operator must be told about once (while the store keeps everything)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import agent
from agent.config.models import GatewayConfig, MqttConfig
from agent.events import Event
from agent.store import EventStore
from agent.testing import (
    BrokerTls,
    Mosquitto,
    MqttCollector,
    console_script,
    free_tcp_port,
    stop_process,
    wait_until,
)
from agent.testing.tls import CertificateSet, KeyPair, make_test_certificates
from agent.uplink.client import MqttUplink
from agent.uplink.credentials import CredentialError

GATEWAY = GatewayConfig(id="gw-1", site="plant7")
STATUS_TOPIC = "plant7/gw-1/_gateway/status"
PASSWORD = "right-horse-battery"
CONFIG_SHA = "5e" * 32

LogEntries = list[dict[str, Any]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return make_test_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def logs() -> Iterator[LogEntries]:
    with capture_logs() as entries:
        yield entries


def tls_broker(server: KeyPair, pki: CertificateSet, **options: Any) -> Mosquitto:
    return Mosquitto(
        tls=BrokerTls(cafile=pki.ca_file, certfile=server.cert_file, keyfile=server.key_file),
        **options,
    )


def mqtt_config(port: int, **keys: Any) -> MqttConfig:
    return MqttConfig.model_validate(
        {"host": "127.0.0.1", "port": port, "tls": {"enabled": False}, **keys}
    )


def tls_config(port: int, ca_file: Path, **keys: Any) -> MqttConfig:
    return mqtt_config(port, tls={"enabled": True, "ca_file": str(ca_file)}, **keys)


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float,
                what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = predicate()
        if await result if isinstance(result, Awaitable) else result:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(config: MqttConfig, store: EventStore) -> AsyncIterator[MqttUplink]:
    uplink = MqttUplink(config, GATEWAY, store, config_sha256=CONFIG_SHA)
    sender = asyncio.create_task(uplink.run())
    try:
        yield uplink
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await uplink.close()


async def put(store: EventStore, count: int) -> None:
    store.put([Event("window", "m1", i, {"i": i}) for i in range(count)])
    await store.flush()


async def delivered(collector: MqttCollector, store: EventStore, count: int) -> None:
    """`count` events arrived and the store let go of every one of them (PUBACKs came)."""
    await asyncio.to_thread(
        collector.wait_for, lambda m: len(m) >= count, timeout_s=20, what=f"{count} events"
    )
    assert [env.data["i"] for _, env in collector.snapshot()] == list(range(count))

    async def empty() -> bool:
        return await store.depth() == 0

    await until(empty, 10, "the store to be emptied by PUBACKs")


def logged(entries: LogEntries, event: str) -> LogEntries:
    return [e for e in entries if e["event"] == event]


# --- TLS -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_tls_with_the_test_ca_delivers_events(
    pki: CertificateSet, store: EventStore, version: str
) -> None:
    with tls_broker(pki.server, pki) as broker, MqttCollector(
        broker.host, broker.port, "plant7/gw-1/m1/#", ca_file=pki.ca_file
    ) as collector:
        async with running(tls_config(broker.port, pki.ca_file, version=version), store) as up:
            await put(store, 50)
            await delivered(collector, store, 50)
            assert up.state == "connected" and up.last_error == ""


async def test_client_certificate_is_presented_when_the_broker_requires_one(
    pki: CertificateSet, store: EventStore
) -> None:
    tls = BrokerTls(cafile=pki.ca_file, certfile=pki.server.cert_file,
                    keyfile=pki.server.key_file, require_certificate=True)
    with Mosquitto(tls=tls) as broker:
        config = mqtt_config(broker.port, tls={
            "enabled": True, "ca_file": str(pki.ca_file),
            "cert_file": str(pki.client.cert_file), "key_file": str(pki.client.key_file),
        })
        async with running(config, store) as uplink:
            await until(lambda: uplink.connected, 10, "a connection with a client certificate")


async def test_missing_client_certificate_is_reported_with_a_hint_to_it(
    pki: CertificateSet, store: EventStore, logs: LogEntries
) -> None:
    # The TLS 1.3 handshake completes before the broker checks for our certificate; it then
    # closes the connection, which the client sees as a lost connection, not a failed connect.
    tls = BrokerTls(cafile=pki.ca_file, certfile=pki.server.cert_file,
                    keyfile=pki.server.key_file, require_certificate=True)
    with Mosquitto(tls=tls) as broker:
        async with running(tls_config(broker.port, pki.ca_file), store) as uplink:
            await until(lambda: uplink.state == "not_acknowledging", 10, "mqtt_no_connack")
    [error] = logged(logs, "mqtt_no_connack")
    assert "closed before the broker sent CONNACK" in error["detail"]
    assert "client certificate" in error["hint"]


async def test_server_certificate_from_another_ca_is_one_tls_error_and_events_stay_stored(
    pki: CertificateSet, store: EventStore, logs: LogEntries
) -> None:
    with tls_broker(pki.stranger_server, pki) as broker, MqttCollector(
        broker.host, broker.port, "plant7/gw-1/m1/#", ca_file=pki.other_ca_file
    ) as collector:
        await put(store, 20)
        async with running(tls_config(broker.port, pki.ca_file), store) as uplink:
            await until(lambda: uplink.failed_attempts >= 2, 15, "two connection attempts")
            await until(lambda: len(logged(logs, "mqtt_tls_failed")) >= 1, 5, "the TLS error")
            assert uplink.state == "tls_error" and not uplink.connected
            assert await store.depth() == 20
        [error] = logged(logs, "mqtt_tls_failed")  # one line, not one per attempt
        assert error["log_level"] == "error"
        assert error["cause"] == "certificate verify failed: unable to get local issuer certificate"
        assert "mqtt.tls.ca_file" in error["hint"] and str(pki.ca_file) in error["hint"]
        assert "certificate verify failed" in uplink.last_error

        # The operator installs the right CA: the stored events flow.
        async with running(tls_config(broker.port, pki.other_ca_file), store) as uplink:
            await delivered(collector, store, 20)
            assert uplink.state == "connected"


async def test_hostname_mismatch_is_named_as_such(
    pki: CertificateSet, store: EventStore, logs: LogEntries
) -> None:
    with tls_broker(pki.wrong_host_server, pki) as broker:
        async with running(tls_config(broker.port, pki.ca_file), store) as uplink:
            await until(lambda: uplink.state == "tls_error", 10, "the TLS error")
    [error] = logged(logs, "mqtt_tls_failed")
    assert "mismatch, certificate is not valid for '127.0.0.1'" in error["cause"]
    assert "mqtt.host" in error["hint"] and "'127.0.0.1'" in error["hint"]


async def test_tls_towards_a_plain_listener_is_a_tls_error_naming_the_port(
    mosquitto: Mosquitto, pki: CertificateSet, store: EventStore, logs: LogEntries
) -> None:
    async with running(tls_config(mosquitto.port, pki.ca_file), store) as uplink:
        await until(lambda: uplink.state == "tls_error", 10, "the TLS error")
    [error] = logged(logs, "mqtt_tls_failed")
    assert f"port {mosquitto.port} may not be a TLS listener" in error["hint"], error


async def test_unusable_ca_file_is_a_credential_error_at_start(
    tmp_path: Path, store: EventStore
) -> None:
    with pytest.raises(CredentialError, match=r"mqtt.tls.ca_file: cannot use .*missing.pem"):
        MqttUplink(tls_config(8883, tmp_path / "missing.pem"), GATEWAY, store)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(CredentialError, match="not a usable PEM file"):
        MqttUplink(tls_config(8883, tmp_path / "junk.pem"), GATEWAY, store)


# --- credentials -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_wrong_password_is_one_clear_error_and_buffering_continues(
    store: EventStore, logs: LogEntries, version: str
) -> None:
    wrong = "wrong-horse-battery"
    with Mosquitto(users={"gw-1": PASSWORD}) as broker:
        config = mqtt_config(broker.port, username="gw-1", password=wrong, version=version)
        async with running(config, store) as uplink:
            await until(lambda: uplink.failed_attempts >= 2, 15, "two connection attempts")
            await until(lambda: uplink.state == "refused", 5, "the refusal")
            await put(store, 10)
            assert await store.depth() == 10
    [error] = logged(logs, "mqtt_connect_refused")
    assert error["log_level"] == "error"
    assert error["reason"] in ("Not authorized", "Bad user name or password")
    assert "mqtt.username" in error["hint"] and "password" in error["hint"]
    assert wrong not in repr(logs) and wrong not in repr(config)


@pytest.mark.parametrize("source", ["password_file", "password_credential"])
async def test_password_from_a_file_or_a_systemd_credential_is_accepted(
    tmp_path: Path, store: EventStore, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    secrets = tmp_path / "credentials"
    secrets.mkdir()
    (secrets / "mqtt-password").write_text(PASSWORD + "\n")
    if source == "password_file":
        keys: dict[str, Any] = {"password_file": str(secrets / "mqtt-password")}
    else:
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(secrets))
        keys = {"password_credential": "mqtt-password"}
    with Mosquitto(users={"gw-1": PASSWORD, "cloud": "cloud-pw"}) as broker, MqttCollector(
        broker.host, broker.port, "plant7/gw-1/m1/#", username="cloud", password="cloud-pw"
    ) as collector:
        async with running(mqtt_config(broker.port, username="gw-1", **keys), store):
            await put(store, 10)
            await delivered(collector, store, 10)


async def test_missing_credentials_directory_fails_at_start_naming_the_credential(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = mqtt_config(1883, username="gw-1", password_credential="mqtt-password")
    with pytest.raises(CredentialError, match="'mqtt-password'.*CREDENTIALS_DIRECTORY"):
        MqttUplink(config, GATEWAY, store)


# --- peers that take the connection and go quiet ---------------------------------------


class Peer:
    """A TCP server that speaks just enough MQTT to go quiet at a chosen point.

    `connack=None`: accepts and never answers. Otherwise it answers the first bytes
    (the CONNECT) with `connack` and then only listens, acknowledging nothing.
    """

    def __init__(self, connack: bytes | None = None) -> None:
        self.connack = connack
        self.accepted = 0
        self.received = bytearray()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        first = True
        while data := await reader.read(65536):
            self.received += data
            if first and self.connack is not None:
                writer.write(self.connack)
                await writer.drain()
            first = False

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        for writer in self._writers:
            writer.close()
        self._server.close()
        await self._server.wait_closed()


async def test_peer_that_never_sends_connack_is_reported_once(
    store: EventStore, logs: LogEntries
) -> None:
    peer = Peer()
    async with peer as port:
        await put(store, 5)
        config = mqtt_config(port, connect_timeout_s=0.3, keepalive_s=5)
        async with running(config, store) as uplink:
            await until(lambda: uplink.state == "not_acknowledging", 10, "mqtt_no_connack")
            assert peer.accepted == 1 and not uplink.connected
            assert await store.depth() == 5
    [error] = logged(logs, "mqtt_no_connack")
    assert error["log_level"] == "error" and error["timeout_s"] == 0.3
    assert error["attempts"] == 1
    assert "CONNACK" in uplink.last_error


async def test_peer_that_connacks_but_never_pubacks_is_reported_and_nothing_is_deleted(
    store: EventStore, logs: LogEntries
) -> None:
    peer = Peer(connack=bytes([0x20, 0x02, 0x00, 0x00]))  # MQTT 3.1.1: accepted, no session
    async with peer as port:
        await put(store, 8)
        config = mqtt_config(port, version="3.1.1", ack_timeout_s=0.5)
        async with running(config, store) as uplink:
            await until(lambda: uplink.connected, 10, "the fake CONNACK")
            await until(lambda: uplink.state == "not_acknowledging", 10, "mqtt_no_puback")
            assert uplink.inflight == 8
            assert await store.depth() == 8, "nothing is deleted without its PUBACK"
            assert peer.received.count(b"plant7/gw-1/m1/window") == 8
    [error] = logged(logs, "mqtt_no_puback")
    assert error["log_level"] == "error"
    assert error["unacknowledged"] == 8 and error["oldest_s"] >= 0.5
    assert error["ack_timeout_s"] == 0.5


async def test_a_full_backlog_window_waits_for_pubacks_instead_of_polling_the_store(
    store: EventStore,
) -> None:
    peer = Peer(connack=bytes([0x20, 0x02, 0x00, 0x00]))
    async with peer as port:
        await put(store, 50)  # stored before the uplink starts: a backlog
        reads = 0
        read_after = store.read_after

        async def counting_read_after(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return await read_after(*args, **kwargs)

        store.read_after = counting_read_after  # type: ignore[method-assign]
        config = mqtt_config(port, version="3.1.1", max_inflight=10)
        async with running(config, store) as uplink:
            await until(lambda: uplink.inflight == 5, 10, "the backlog's half of the window")
            reads_when_full = reads
            # No PUBACK will ever come; the tokens of the replay rate keep coming.
            await asyncio.sleep(1.0)
            assert uplink.inflight == 5
            assert reads - reads_when_full <= 2, "a full window must not spin on the store"


# --- birth and will --------------------------------------------------------------------


async def test_birth_is_retained_online_and_close_makes_it_offline(
    mosquitto: Mosquitto, store: EventStore
) -> None:
    async with running(mqtt_config(mosquitto.port), store) as uplink:
        await until(lambda: uplink.connected, 10, "the connection")
        assert uplink.status_topic == STATUS_TOPIC
        # Subscribed only now: the birth reaches a late subscriber because it is retained.
        with MqttCollector(mosquitto.host, mosquitto.port, STATUS_TOPIC) as late:
            topic, online, retained = await asyncio.to_thread(
                late.wait_for_status, "online", timeout_s=10)
            assert topic == STATUS_TOPIC and retained
            assert online.gateway == "gw-1" and online.agent_version == agent.__version__
            assert online.config_sha256 == CONFIG_SHA
            await uplink.close()
            _, offline, _ = await asyncio.to_thread(late.wait_for_status, "offline", timeout_s=5)
    # The clean `offline` is made at close(), after the birth; the will was made before it.
    assert offline.time_ns > online.time_ns
    with MqttCollector(mosquitto.host, mosquitto.port, STATUS_TOPIC) as later:
        _, retained_status, retained = await asyncio.to_thread(
            later.wait_for_status, "offline", timeout_s=5)
    assert retained and retained_status == offline
    assert [s.status for _, s, _ in later.statuses] == ["offline"]


@pytest.mark.e2e
def test_broker_publishes_the_will_when_the_agent_is_killed(
    tmp_path: Path, mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> None:
    nobody_listens = free_tcp_port()  # the agent keeps running and retrying its device
    config = tmp_path / "config.yaml"
    config.write_text(f"""
gateway: {{id: gw-1, site: plant7, state_dir: {tmp_path / "state"}}}
mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, tls: {{enabled: false}}}}
devices:
  - name: m1
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {nobody_listens}
    tags:
      - {{name: a, table: input, address: 0, type: float32}}
""")
    numba_cache = tmp_path_factory.getbasetemp() / "numba-cache"
    numba_cache.mkdir(exist_ok=True)
    with MqttCollector(mosquitto.host, mosquitto.port, STATUS_TOPIC) as collector, \
            open(tmp_path / "agent.log", "w") as log:
        process = subprocess.Popen(
            [console_script("edge-agent"), "run", "-c", str(config)], stderr=log,
            stdout=subprocess.DEVNULL, env={"NUMBA_CACHE_DIR": str(numba_cache),
                                            "PATH": "/usr/bin:/bin"},
        )
        try:
            def online_or_exited() -> bool:
                assert process.poll() is None, (tmp_path / "agent.log").read_text()
                return any(s.status == "online" for _, s, _ in collector.statuses)

            wait_until(online_or_exited, timeout_s=60, what="the agent's birth")
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=10) == -signal.SIGKILL
            _, will, _ = collector.wait_for_status("offline", timeout_s=10)
        finally:
            stop_process(process)
    _, online, _ = collector.wait_for_status("online", timeout_s=0)
    assert will.gateway == "gw-1"
    assert will.time_ns < online.time_ns, "the will is made before connecting, the birth after"

