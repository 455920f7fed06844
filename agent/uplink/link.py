"""How the MQTT connection is doing: one state, the last error, one log line per fault.

`LinkMonitor` is told, on the event loop, what the connection saw (a failed
connection attempt and its exception, a socket opened, a CONNACK, a disconnect) and
watches the in-flight publishes for PUBACKs. The connection retries forever with
backoff; this turns its retries into one line per fault (`mqtt_unreachable`, `mqtt_connect_refused`,
`mqtt_tls_failed`, `mqtt_no_connack`, `mqtt_no_puback`), logged when the fault starts
and again only when it changes or comes back after it was over. Events stay stored
whatever the state; nothing here deletes or drops anything.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable, Iterable
from typing import Any, Literal

import structlog

from agent.config.models import MqttConfig
from agent.uplink.packets import Reason

log = structlog.get_logger("agent.uplink")

LinkState = Literal[
    "connecting", "connected", "refused", "tls_error", "unreachable", "not_acknowledging"
]

# X509_V_ERR_* codes of OpenSSL (x509_vfy.h) that need a different fix.
_UNKNOWN_ISSUER = frozenset({2, 18, 19, 20, 21})
_EXPIRED_OR_NOT_YET_VALID = frozenset({9, 10})
_HOST_MISMATCH = frozenset({62, 64})  # host name, IP address

_REFUSAL_HINTS = {
    0x84: 'the broker does not speak this MQTT version: set mqtt.version to "3.1.1"',
    0x85: "the broker rejects the client id: check mqtt.client_id (default: gateway.id)",
    0x86: "check mqtt.username and the password (password, password_file or password_credential)",
    0x87: "check mqtt.username, the password and the broker's access rules for this client",
    0x88: "the broker is up but not accepting clients; retrying with backoff",
    0x89: "the broker is busy; retrying with backoff",
    0x8A: "the broker has banned this client; ask its operator",
    0x8C: "the broker wants another authentication method",
    0x9C: "the broker asks for another server: check mqtt.host",
    0x9D: "the broker has moved: check mqtt.host",
    0x9F: "the broker limits connection attempts; retrying with backoff",
}


class LinkMonitor:
    def __init__(
        self,
        config: MqttConfig,
        loop: asyncio.AbstractEventLoop,
        inflight: Callable[[], Iterable[tuple[int, int]]],
    ) -> None:
        """`inflight` gives the (MQTT packet id, store seq) pairs awaiting their PUBACK."""
        self._config = config
        self._loop = loop
        self._inflight = inflight
        self.state: LinkState = "connecting"
        self.last_error = ""
        self._fault: tuple[str, str] | None = None  # (log event, cause) logged, not yet over
        self.failed_attempts = 0
        """Connection attempts that failed since the last successful CONNACK."""
        self._connack_timer: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._sent_at: dict[tuple[int, int], float] = {}  # in-flight publish -> first seen
        self._puback_overdue_since = 0.0

    @property
    def _where(self) -> dict[str, Any]:
        return {"host": self._config.host, "port": self._config.effective_port}

    # --- what the connection saw ---------------------------------------------------------------

    def connect_failed(self, exc: BaseException | None) -> None:
        """No connection: TCP connect or TLS handshake failed (retried with backoff)."""
        self.failed_attempts += 1
        if isinstance(exc, ssl.SSLError):
            cause, hint = _tls_cause(exc, self._config)
            self._report("tls_error", "mqtt_tls_failed", cause, f"TLS: {cause}",
                         cause=cause, hint=hint)
            return
        if self._config.tls.enabled and isinstance(exc, ConnectionResetError | BrokenPipeError):
            # A reset before the connection is up comes from the handshake, typically a
            # plain MQTT listener that does not understand the ClientHello.
            cause = f"the broker closed the connection during the TLS handshake ({exc.strerror})"
            hint = (f"port {self._config.effective_port} may not be a TLS listener: check "
                    "mqtt.port and mqtt.tls.enabled")
            self._report("tls_error", "mqtt_tls_failed", cause, f"TLS: {cause}",
                         cause=cause, hint=hint)
            return
        detail = _os_error_text(exc)
        # One line per outage, whatever the errno of each attempt.
        self._report("unreachable", "mqtt_unreachable", "", f"unreachable: {detail}",
                     level="warning", error=detail,
                     detail="connection failed, retrying with backoff; events stay stored")

    def socket_opened(self) -> None:
        """TCP (and TLS) is up and CONNECT is on its way: the CONNACK is due."""
        self._cancel_connack_timer()
        self._connack_timer = self._loop.call_later(
            self._config.connect_timeout_s, self._no_connack, "timeout"
        )

    def connack(self, reason: Reason) -> bool:
        """The broker answered CONNECT; whether it accepted."""
        self._cancel_connack_timer()
        if reason.is_failure:
            self.failed_attempts += 1
            hint = _REFUSAL_HINTS.get(reason.value, "see the broker's log for why")
            self._report("refused", "mqtt_connect_refused", str(reason),
                         f"refused by the broker: {reason}", reason=str(reason),
                         code=reason.value, hint=hint)
            return False
        recovered = {"failed_attempts": self.failed_attempts} if self.failed_attempts else {}
        log.info("mqtt_connected", **self._where, **recovered)
        self.failed_attempts = 0
        if self._fault is not None and self._fault[0] == "mqtt_no_puback":
            self.state = "not_acknowledging"  # until a PUBACK proves otherwise
        else:
            self._fault = None
            self.state = "connected"
        # What was in flight goes again: each gets ack_timeout_s from now.
        now = self._loop.time()
        self._sent_at = dict.fromkeys(self._sent_at, now)
        self._schedule_watchdog()
        return True

    def disconnected(self) -> None:
        if self._connack_timer is not None:
            self._connack_timer.cancel()
            self._no_connack("closed")
        self._stop_watchdog()
        if self.state == "connected":
            self.state = "connecting"

    def close(self) -> None:
        self._cancel_connack_timer()
        self._stop_watchdog()

    # --- faults ----------------------------------------------------------------------

    def _report(
        self, state: LinkState, event: str, key: str, summary: str, *,
        level: Literal["warning", "error"] = "error", **fields: Any,
    ) -> None:
        """Enter `state`; log `event` only if the fault (`event`, `key`) is not reported yet."""
        self.state = state
        self.last_error = summary
        if self._fault == (event, key):
            return
        self._fault = (event, key)
        if level == "warning":
            log.warning(event, **self._where, **fields)
        else:
            log.error(event, **self._where, **fields)

    def _no_connack(self, why: Literal["timeout", "closed"]) -> None:
        self._connack_timer = None
        self.failed_attempts += 1
        timeout = self._config.connect_timeout_s
        detail = (f"no CONNACK within {timeout:g} s of connecting" if why == "timeout"
                  else "the connection closed before the broker sent CONNACK")
        hint = ("something accepts the connection on this port but does not answer MQTT: "
                "check mqtt.port, mqtt.tls.enabled and the broker's log")
        if why == "closed" and self._config.tls.enabled and self._config.tls.cert_file is None:
            hint += ("; a broker that requires a client certificate closes the connection "
                     "like this (mqtt.tls.cert_file, mqtt.tls.key_file)")
        self._report(
            "not_acknowledging", "mqtt_no_connack", "", detail, detail=detail,
            timeout_s=timeout, attempts=self.failed_attempts, hint=hint,
        )

    def _cancel_connack_timer(self) -> None:
        if self._connack_timer is not None:
            self._connack_timer.cancel()
            self._connack_timer = None

    # --- PUBACK watchdog -------------------------------------------------------------

    def _schedule_watchdog(self) -> None:
        self._stop_watchdog()
        interval = min(1.0, self._config.ack_timeout_s / 4)
        self._watchdog = self._loop.call_later(interval, self._check_acks)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _check_acks(self) -> None:
        """Age of the oldest in-flight publish (from when it was first seen, at most one
        watchdog interval late, or from the reconnect that sent it again)."""
        now = self._loop.time()
        current = set(self._inflight())
        answered = any(key not in current for key in self._sent_at)
        self._sent_at = {key: self._sent_at.get(key, now) for key in current}
        oldest = min(self._sent_at.values(), default=now)
        timeout = self._config.ack_timeout_s
        if now - oldest >= timeout:
            if self._fault != ("mqtt_no_puback", ""):
                self._puback_overdue_since = oldest
            self._report(
                "not_acknowledging", "mqtt_no_puback", "",
                f"no PUBACK for {now - oldest:.0f} s ({len(current)} unacknowledged)",
                unacknowledged=len(current), oldest_s=round(now - oldest, 1),
                ack_timeout_s=timeout,
                hint="the broker takes messages but does not acknowledge them; they stay "
                     "stored and are sent again after a reconnect",
            )
        elif self._fault == ("mqtt_no_puback", "") and (answered or not current):
            log.info("mqtt_puback_resumed", **self._where,
                     waited_s=round(now - self._puback_overdue_since, 1),
                     unacknowledged=len(current))
            self._fault = None
            self.state = "connected"
        self._schedule_watchdog()


def _tls_cause(exc: ssl.SSLError, config: MqttConfig) -> tuple[str, str]:
    """What went wrong in the handshake, and what to check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or _ssl_text(exc)
        cause = f"certificate verify failed: {message}"
        code = exc.verify_code
        if code in _HOST_MISMATCH or "mismatch" in message.lower():
            return cause, (f"the broker's certificate is not issued for {config.host!r}: "
                           "set mqtt.host to a name the certificate holds")
        if code in _EXPIRED_OR_NOT_YET_VALID:
            return cause, ("check the validity dates of the broker's certificate and this "
                           "gateway's clock (NTP)")
        if code in _UNKNOWN_ISSUER:
            now = str(config.tls.ca_file) if config.tls.ca_file else "the system store"
            return cause, ("mqtt.tls.ca_file must be the CA that signed the broker's "
                           f"certificate (now: {now})")
        return cause, "check mqtt.tls.ca_file and the broker's certificate"
    cause = _ssl_text(exc)
    reason = (exc.reason or "").upper()
    if reason == "WRONG_VERSION_NUMBER":
        return cause, (f"port {config.effective_port} may not be a TLS listener: check "
                       "mqtt.port and mqtt.tls.enabled")
    if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
        return cause, ("the broker may want a client certificate: set mqtt.tls.cert_file "
                       "and mqtt.tls.key_file")
    return cause, "check mqtt.tls and that the broker listens with TLS on this port"


def _ssl_text(exc: ssl.SSLError) -> str:
    """`wrong version number` from `[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)`."""
    text = re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", str(exc.strerror or exc))
    return text or str(exc)


def _os_error_text(exc: BaseException | None) -> str:
    if exc is None:
        return "connection failed"
    if isinstance(exc, TimeoutError):
        text = str(exc)
        return "timed out" if text in ("", "timed out") else f"timed out: {text}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
