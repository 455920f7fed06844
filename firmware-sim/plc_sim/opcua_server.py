"""Serving a simulated machine over OPC UA (asyncua), with the faults tests inject.

The same model object the Modbus server reads is exposed as variables under
`Objects/<ns>:<scenario>` with string NodeIds `ns=<ns>;s=<scenario>.<reading>` (the keys of
the machine's trace record, e.g. `ns=2;s=compressor.active_power_w`), plus a text
(`firmware`), a boolean (`running`) and an array (`power_history_w`, the last samples), so
every value kind the agent handles is served; and the machine's array readings (`arrays`,
e.g. the compressor's `vibration_waveform_mm_s`: a capture of 1,024 samples at 2,048 Hz,
`plc_sim.vibration`), each a Double array refreshed every tick. Values carry the model
tick's time as their source timestamp.

Faults, for tests that provoke what peers fail at:

* `restart()`: the server goes away (every connection dropped, every session and
  subscription forgotten) and comes back on the same port, like a PLC rebooting;
* `stall_subscriptions()`: every existing subscription stops publishing, data and
  keep-alives alike, while the session still answers Reads: the silent failure;
* `expire_subscriptions()`: every subscription is deleted server-side, as when its lifetime
  ran out, and the client is not told;
* `drop_publish_responses()`: the sessions connected now get no answer to their
  PublishRequests (the server takes them and the answers are lost) while every other request
  is answered, until `answer_publish_requests()`: a client that waits for ever on a lost
  PublishRequest gets nothing, however often it recreates its subscription;
* `announce_shutdown()`: every subscription tells its client `BadShutdown` (a status
  change), as a server about to stop does;
* `set_bad(reading, code)`: that variable is served with a bad (or uncertain) StatusCode
  until `set_bad(reading, None)`.

Security: `users` and `user_certificates` refuse anonymous sessions, every unknown name or
wrong password and every user certificate not registered (asyncua checks that the client
holds the certificate's key: the token is signed); `security=True` offers only Basic256Sha256
Sign and SignAndEncrypt endpoints with a certificate made at start in `pki_dir` (its
fingerprint is what a client must pin).
"""

from __future__ import annotations

import asyncio
import socket
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import structlog
from asyncua import ua
from asyncua.crypto.cert_gen import generate_private_key, generate_self_signed_app_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.server import Server
from asyncua.server.uaprocessor import UaProcessor
from asyncua.server.user_managers import UserManager
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

log = structlog.get_logger(__name__)

NAMESPACE_URI = "urn:edge-agent:plc-sim"
APPLICATION_URI = "urn:edge-agent:plc-sim:server"
HISTORY_LENGTH = 8
"""Samples in the `power_history_w` array."""
ReadingsSource = Callable[[], Mapping[str, object]]
ArraysSource = Callable[[], Mapping[str, Sequence[float]]]
NOT_SERVED = frozenset({"time_ns", "fault", "fault_severity"})
"""Trace keys that are the simulator's ground truth (and its clock), not what a PLC serves."""


def _variant(value: object) -> ua.Variant:
    if isinstance(value, bool):
        return ua.Variant(value, ua.VariantType.Boolean)
    if isinstance(value, int):
        return ua.Variant(value, ua.VariantType.Int64)
    if isinstance(value, str):
        return ua.Variant(value, ua.VariantType.String)
    if isinstance(value, list):
        return ua.Variant([float(v) for v in value], ua.VariantType.Double)
    return ua.Variant(float(value), ua.VariantType.Double)  # type: ignore[arg-type]


def _answers_publish(response: object) -> bool:
    """A PublishResponse, or the fault asyncua's server answers a PublishRequest with when it
    timed out or was one too many (no other request gets these two)."""
    if isinstance(response, ua.PublishResponse):
        return True
    return isinstance(response, ua.ServiceFault) and response.ResponseHeader.ServiceResult.value in (
        StatusCodes.BadTimeout, StatusCodes.BadTooManyPublishRequests)


def make_server_certificate(pki_dir: Path, host: str) -> tuple[Path, Path]:
    """A self-signed server certificate and key in `pki_dir` (kept across restarts)."""
    cert_path, key_path = pki_dir / "server-cert.der", pki_dir / "server-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    pki_dir.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    cert = generate_self_signed_app_certificate(
        key, "plc-sim", {},
        [x509.UniformResourceIdentifier(APPLICATION_URI), x509.DNSName(host),
         x509.DNSName(socket.gethostname())],
        extended=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return cert_path, key_path


class _KnownUsers(UserManager):
    """Users by name and password or by user certificate (DER, compared exactly, as a PLC's
    list of registered user certificates); anyone else (anonymous too) is refused."""

    def __init__(self, passwords: Mapping[str, str], certificates: Mapping[bytes, str]) -> None:
        self._passwords = dict(passwords)
        self._certificates = dict(certificates)

    def get_user(self, iserver: InternalServer, username: str | None = None,
                 password: str | None = None, certificate: Any = None) -> User | None:
        if username is not None and self._passwords.get(username) == password:
            return User(role=UserRole.User, name=username)
        if isinstance(certificate, bytes) and certificate in self._certificates:
            return User(role=UserRole.User, name=self._certificates[certificate])
        return None


def _certificate_der(path: Path) -> bytes:
    """The DER bytes of a certificate file in PEM or DER."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        data = x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    return data


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class OpcUaSimServer:
    """A machine's readings as OPC UA variables, refreshed every `tick_s`."""

    def __init__(self, scenario: str, readings: ReadingsSource, *, host: str = "127.0.0.1",
                 port: int = 0, tick_s: float = 0.1, security: bool = False,
                 pki_dir: Path | None = None, firmware: str = "1.2",
                 advance: Callable[[float], None] | None = None,
                 users: Mapping[str, str] | None = None,
                 user_certificates: Mapping[str, Path] | None = None,
                 arrays: ArraysSource | None = None) -> None:
        """`arrays`, when given, adds array variables (name -> samples, read every tick).
        `advance`, when given, moves the model by `tick_s` each tick (in-process use; the
        `plc-sim` command's own clock moves it otherwise). `users` (name -> password) and
        `user_certificates` (name -> certificate file, PEM or DER), when given, are the only
        ways in: anonymous sessions are refused. A user certificate needs `security=True`:
        asyncua offers the certificate token only with a signing policy."""
        self._scenario = scenario
        self._readings = readings
        self._host = host
        self._port = port
        self._tick_s = tick_s
        self._security = security
        self._pki_dir = pki_dir
        self._firmware = firmware
        self._advance = advance
        self._users = users
        self._user_certificates = user_certificates
        self._arrays = arrays
        self._server: Server | None = None
        self._ns = 2
        self._nodes: dict[str, ua.NodeId] = {}
        self._bad: dict[str, int] = {}
        self._history: deque[float] = deque(maxlen=HISTORY_LENGTH)
        self._updater: asyncio.Task[None] | None = None
        self._dropping_publish = False
        self._silenced: weakref.WeakSet[UaProcessor] = weakref.WeakSet()
        """The connections whose publish answers are lost while `_dropping_publish`."""
        self.certificate_path: Path | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self._host}:{self._port}/plc-sim/"

    def node_id(self, reading: str) -> str:
        """The NodeId text of a reading (`ns=2;s=compressor.active_power_w`)."""
        return f"ns={self._ns};s={self._scenario}.{reading}"

    async def start(self) -> int:
        """Listen (on a free port when given 0, kept across restarts); the port."""
        if self._port == 0:
            # Chosen before binding so that the advertised endpoint URLs carry the real port.
            self._port = _free_port(self._host)
        server = Server(user_manager=await self._user_manager())
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"plc-sim {self._scenario}")
        await server.set_application_uri(APPLICATION_URI)
        if self._security:
            if self._pki_dir is None:
                raise ValueError("security needs a pki_dir for the server certificate")
            cert, key = await asyncio.to_thread(make_server_certificate, self._pki_dir,
                                                self._host)
            self.certificate_path = cert
            await server.load_certificate(cert)
            await server.load_private_key(key)
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                                        ua.SecurityPolicyType.Basic256Sha256_Sign])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self._ns = await server.register_namespace(NAMESPACE_URI)
        await self._build_address_space(server)
        await server.start()
        self._server = server
        self._updater = asyncio.create_task(self._update_loop(server))
        log.info("opcua_listening", endpoint=self.endpoint, security=self._security)
        return self._port

    async def _user_manager(self) -> UserManager | None:
        if not self._users and not self._user_certificates:
            return None  # asyncua's default: anyone, anonymous too
        certificates = {await asyncio.to_thread(_certificate_der, path): name
                        for name, path in (self._user_certificates or {}).items()}
        return _KnownUsers(self._users or {}, certificates)

    async def stop(self) -> None:
        updater, self._updater = self._updater, None
        if updater is not None:
            updater.cancel()
            await asyncio.gather(updater, return_exceptions=True)
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down `down_s`, start again on the same port with a fresh state."""
        await self.stop()
        log.info("opcua_restart", down_s=down_s)
        await asyncio.sleep(down_s)
        await self.start()

    async def stall_subscriptions(self) -> int:
        """Silence every subscription that exists now; how many were silenced."""
        assert self._server is not None
        subs = list(self._server.iserver.subscription_service.subscriptions.values())
        for sub in subs:
            await sub.stop()
        log.info("opcua_subscriptions_stalled", count=len(subs))
        return len(subs)

    async def expire_subscriptions(self) -> int:
        """Delete every subscription on the server's side, as when its lifetime ran out while
        the client was away: the client is not told. How many were deleted."""
        assert self._server is not None
        service = self._server.iserver.subscription_service
        ids = list(service.subscriptions)
        await service.delete_subscriptions(ids)
        log.info("opcua_subscriptions_expired", count=len(ids))
        return len(ids)

    async def drop_publish_responses(self) -> int:
        """From now on, lose the answers to the PublishRequests of the connections open now
        (data changes and keep-alives alike, and the BadTimeout of a request the server let
        time out); every other request is answered. How many connections."""
        assert self._server is not None and self._server.bserver is not None
        processors = [client.processor for client in self._server.bserver.clients
                      if client.processor is not None]
        for processor in processors:
            if processor not in self._silenced:
                self._silenced.add(processor)
                processor.send_response = self._dropping(  # type: ignore[method-assign]
                    processor.send_response)
        self._dropping_publish = True
        log.info("opcua_publish_responses_dropped", connections=len(processors))
        return len(processors)

    def answer_publish_requests(self) -> int:
        """Answer PublishRequests again (those already lost stay lost); the connections that
        were losing them."""
        self._dropping_publish = False
        log.info("opcua_publish_responses_answered")
        return len(self._silenced)

    def _dropping(self, send: Callable[..., None]) -> Callable[..., None]:
        """`UaProcessor.send_response`, losing publish answers while `_dropping_publish`."""

        def send_response(requesthandle: int, seqhdr: Any, response: Any,
                          msgtype: bytes = ua.MessageType.SecureMessage) -> None:
            if self._dropping_publish and _answers_publish(response):
                return
            send(requesthandle, seqhdr, response, msgtype)

        return send_response

    async def announce_shutdown(self) -> int:
        """Every subscription sends its client a `BadShutdown` status change; how many."""
        assert self._server is not None
        subs = list(self._server.iserver.subscription_service.subscriptions.values())
        for sub in subs:
            await sub.enqueue_statuschange(ua.StatusCode(ua.UInt32(StatusCodes.BadShutdown)))
        log.info("opcua_shutdown_announced", count=len(subs))
        return len(subs)

    def set_bad(self, reading: str, code: int | None = StatusCodes.BadSensorFailure) -> None:
        """Serve `reading` with StatusCode `code` (None: good again) from the next tick on."""
        if code is None:
            self._bad.pop(reading, None)
        else:
            self._bad[reading] = code

    def _values(self) -> dict[str, object]:
        values: dict[str, object] = {
            k: v for k, v in self._readings().items()
            if k not in NOT_SERVED and isinstance(v, bool | int | float | str)}
        power = values.get("active_power_w")
        if isinstance(power, float):
            self._history.append(power)
        values["power_history_w"] = list(self._history)
        if self._arrays is not None:
            values.update((name, list(samples)) for name, samples in self._arrays().items())
        values["running"] = values.get("state") == 2
        values["firmware"] = self._firmware
        return values

    async def _build_address_space(self, server: Server) -> None:
        machine = await server.nodes.objects.add_object(
            ua.NodeId(ua.String(self._scenario), ua.Int16(self._ns)), ua.QualifiedName(self._scenario, self._ns))
        self._nodes = {}
        for name, value in self._values().items():
            node_id = ua.NodeId(ua.String(f"{self._scenario}.{name}"), ua.Int16(self._ns))
            await machine.add_variable(node_id, ua.QualifiedName(name, self._ns), _variant(value))
            self._nodes[name] = node_id

    async def _update_loop(self, server: Server) -> None:
        while True:
            if self._advance is not None:
                self._advance(self._tick_s)
            now = cast(ua.DateTime, datetime.now(UTC))  # asyncua's DateTime is a datetime
            for name, value in self._values().items():
                node_id = self._nodes.get(name)
                if node_id is None:
                    continue
                status = ua.StatusCode(ua.UInt32(self._bad.get(name, StatusCodes.Good)))
                data = ua.DataValue(_variant(value), StatusCode=status, SourceTimestamp=now,
                                    ServerTimestamp=now)
                await server.write_attribute_value(node_id, data)
            await asyncio.sleep(self._tick_s - time.monotonic() % self._tick_s)
