"""MQTT uplink: sends stored events at QoS 1 and acknowledges them to the store.

The connection (`connection.py`, on the event loop) keeps what it published until the
PUBACK and sends it again after a reconnect, so the in-flight map survives reconnects;
after a restart of the agent the store still holds them all. This class is the
connection's listener: it turns what the connection saw into link state, acknowledgements
to the store and commands, and runs the send loop (live first, `send_order.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import Self

import structlog

from agent import __version__
from agent.config.models import GatewayConfig, MqttConfig, TlsConfig
from agent.events import GATEWAY_DEVICE, mark_historical
from agent.store import EventStore, StoredEvent
from agent.uplink.connection import MqttConnection, Settings
from agent.uplink.credentials import CredentialError, mqtt_password
from agent.uplink.link import LinkMonitor, LinkState
from agent.uplink.packets import Message, Reason, Will
from agent.uplink.presence import PRESENCE_KIND, Presence, PresenceState, encode_presence
from agent.uplink.read_ahead import ReadAhead
from agent.uplink.send_order import SendOrder

log = structlog.get_logger(__name__)

CLOSE_ACK_TIMEOUT_S = 1.0
"""How long `close()` waits for the PUBACK of the retained `offline` before DISCONNECT."""
SESSION_EXPIRY_S = 7 * 86400
"""With a command topic: how long the broker keeps our session (and the commands sent to
it) while the agent is away."""
COMMANDS_IN_FLIGHT = 8
"""With a command topic: QoS 1 messages the broker may send before we acknowledge one (MQTT 5
Receive Maximum); each is acknowledged only once handled."""

READ_AHEAD_EVENTS = 512
"""Backlog events read from the store at a time, the next batch while one is being sent."""

CommandHandler = Callable[[bytes, Callable[[], None]], None]
"""Called on the event loop with a message from the command topic and the function that
acknowledges it (a no-op once the connection it came on is gone)."""


class MqttUplink:
    RESENDS = True
    """Whether what was in flight on a lost connection goes again, as it was, on the next."""

    def __init__(
        self, config: MqttConfig, gateway: GatewayConfig, store: EventStore, *,
        config_sha256: str = "", command_topic: str | None = None,
        on_command: CommandHandler | None = None,
    ) -> None:
        """Reads the password and TLS files now: raises `CredentialError` if one is unusable.

        `config_sha256` (of the configuration file) goes into the status message. With a
        `command_topic`, the session persists and what arrives there goes to `on_command`.
        """
        self._config = config
        self._gateway = gateway
        self._store = store
        self._wake = store.events_signal()
        """Set by the store when events can be read and here by PUBACKs: the send loop's one
        wake-up."""
        self._config_sha256 = config_sha256
        self._loop = asyncio.get_running_loop()
        self._connected = asyncio.Event()
        self._inflight: dict[int, int] = {}  # MQTT packet id -> store sequence number
        self._historical_inflight: set[int] = set()
        self._topics: dict[tuple[str, str], str] = {}  # (device, kind) -> topic
        self._link = LinkMonitor(config, self._loop, lambda: self._inflight.items())
        self._order: SendOrder | None = None
        """What goes next (live first); made by `run`."""
        self._ahead = ReadAhead(store, READ_AHEAD_EVENTS)
        self._closing = False
        self._closed = False
        self._command_topic = command_topic if on_command is not None else None
        self._on_command = on_command
        self._connection = 0
        """Counts CONNACKs: a command is acknowledged on the connection it came on only."""
        self.status_topic = config.topic.format(
            site=gateway.site, gateway=gateway.id, device=GATEWAY_DEVICE, kind=PRESENCE_KIND
        )
        """Where the retained `online`/`offline` status message goes (docs/events.md)."""
        self._mqtt = MqttConnection(self._settings(), self)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def state(self) -> LinkState:
        """connecting, connected, refused, tls_error, unreachable or not_acknowledging."""
        return self._link.state

    @property
    def last_error(self) -> str:
        """The latest connection fault, one line; kept after recovery, empty if none yet."""
        return self._link.last_error

    @property
    def failed_attempts(self) -> int:
        """Connection attempts that failed since the last successful connect."""
        return self._link.failed_attempts

    def topic_for(self, event: StoredEvent) -> str:
        """Formatted once per device and kind: a replay sends the same few topics all along."""
        key = (event.device, event.kind)
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = self._config.topic.format(
                site=self._gateway.site, gateway=self._gateway.id, device=event.device,
                kind=event.kind,
            )
        return topic

    def _settings(self) -> Settings:
        cfg = self._config
        persistent = self._command_topic is not None
        password = None
        if cfg.username is not None:
            secret = mqtt_password(cfg)
            password = secret.get_secret_value() if secret is not None else None
        return Settings(
            host=cfg.host, port=cfg.effective_port, client_id=cfg.client_id or self._gateway.id,
            v5=cfg.version == "5", keepalive_s=cfg.keepalive_s,
            connect_timeout_s=cfg.connect_timeout_s,
            tls=_tls_context(cfg.tls) if cfg.tls.enabled else None,
            username=cfg.username, password=password,
            # Commands sent while the gateway is away wait in its session at the broker.
            clean_start=not persistent,
            session_expiry_s=SESSION_EXPIRY_S if persistent else 0,
            receive_maximum=COMMANDS_IN_FLIGHT if persistent else None,
            manual_ack=persistent, resend=self.RESENDS,
        )

    def _status(self, status: PresenceState) -> bytes:
        return encode_presence(Presence(
            gateway=self._gateway.id, status=status, agent_version=__version__,
            config_sha256=self._config_sha256, time_ns=time.time_ns(),
        ))

    # --- what the connection saw (connection.Listener) -------------------------------
    # After close() began, what it still reports is not news (and must start no timer).

    def will(self) -> Will | None:
        """`offline`, retained: the broker publishes it when it loses us without DISCONNECT;
        made before each attempt, so that its `t` is this connection's."""
        return Will(self.status_topic, self._status("offline"), qos=1, retain=True)

    def socket_opened(self) -> None:
        if not self._closing:
            self._link.socket_opened()

    def connacked(self, reason: Reason) -> None:
        if self._closing or not self._link.connack(reason):
            return
        self._connection += 1
        self._session_started()

    def connect_failed(self, exc: BaseException) -> None:
        # The connection retries with backoff; the monitor logs one line per fault.
        if not self._closing:
            self._link.connect_failed(exc)
            self._set_connected(False)

    def disconnected(self, reason: str) -> None:
        if self._connected.is_set():
            log.warning("mqtt_disconnected", host=self._config.host, reason=reason)
        self._set_connected(False)
        self._link.disconnected()

    def acknowledged(self, acks: list[tuple[int, Reason]]) -> None:
        inflight = self._inflight
        done = []
        for mid, reason in acks:
            seq = inflight.pop(mid, None)
            if seq is None:
                continue
            if not reason.is_failure:
                done.append(seq)
                continue
            # The broker refused it (MQTT 5 PUBACK >= 0x80): kept in the store for later.
            log.error("mqtt_publish_refused", seq=seq, reason=str(reason))
            self._historical_inflight.discard(seq)
            self._store.release(seq)
        if self._historical_inflight:
            self._historical_inflight.difference_update(done)
        self._store.ack(*done)
        self._wake.set()

    def message_received(self, message: Message) -> None:
        """A message on a subscribed topic: here only the command topic is."""
        self._command_received(message.mid, message.qos, message.payload)

    def _session_started(self) -> None:
        """After each CONNACK: the birth, then sending may begin (a format may wait longer)."""
        # Retained, so a subscriber that comes later still learns we are up.
        self._mqtt.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        self._subscribe_commands()
        self._set_connected(True)

    def _set_connected(self, up: bool) -> None:
        """Whether events may be sent now; the store batches its commits while they may not."""
        if up:
            self._connected.set()
        else:
            self._connected.clear()
        self._store.link(up)

    def _subscribe_commands(self) -> None:
        if self._command_topic is not None:  # again each time: the session may be new
            self._mqtt.subscribe(self._command_topic, qos=1)

    def _command_received(self, mid: int, qos: int, payload: bytes) -> None:
        if self._closing or self._on_command is None:
            return  # not acknowledged: the broker sends it again to the next connection
        connection = self._connection
        done = False

        def ack() -> None:  # once; on the connection the message came on only
            nonlocal done
            if not done and qos > 0 and connection == self._connection and self.connected:
                self._mqtt.ack(mid)
            done = True

        self._on_command(payload, ack)

    async def run(self) -> None:
        """Connect (retrying in the background) and send stored events until cancelled."""
        cfg = self._config
        log.info(
            "mqtt_connecting", host=cfg.host, port=cfg.effective_port, tls=cfg.tls.enabled,
            client_id=cfg.client_id or self._gateway.id,
        )
        self._set_connected(False)  # until the first CONNACK
        self._connect()
        order = self._order = SendOrder(
            self._store.last_seq, replay_rate_per_s=cfg.replay_rate_per_s, now_s=self._loop.time()
        )
        # Refill the window in batches, not a slot per PUBACK: each refill is a store read.
        refill = max(1, cfg.max_inflight // 4)
        down_since = self._loop.time()
        while True:
            if not self._connected.is_set():
                down_since = min(down_since, self._loop.time())
                await self._connected.wait()
                order.reconnected(self._store.last_seq, self._loop.time() - down_since,
                                  cfg.replay_after_s)
                down_since = float("inf")
            free = cfg.max_inflight - len(self._inflight)
            if free < refill and self._inflight:
                self._wake.clear()
                await self._sleep()
                continue
            self._wake.clear()
            newest = self._store.last_seq
            if order.live_cursor < newest:
                live = await self._store.read_after(order.live_cursor, free)
                # Nothing read: the rest was dropped by the store's bounds meanwhile.
                order.sent_live(live[-1].seq if live else newest)
                if live:
                    self._publish(live, historical=False)
                    continue
            sent, wait_s = await self._replay_some(order, free)
            if not sent:
                await self._sleep(wait_s)

    def _connect(self) -> None:
        """Connect in the background; the connection reconnects (with backoff) by itself."""
        self._mqtt.start()

    async def _replay_some(self, order: SendOrder, free: int) -> tuple[bool, float | None]:
        """Send a rate-limited slice of the backlog. Whether anything was sent, and if not,
        how long to wait at most before trying again (None: until a PUBACK or a commit)."""
        span = order.backlog()
        if span is None:
            return False, None
        half = self._config.max_inflight // 2
        # Refilled as soon as a slot frees, not held back for a larger batch: a broker with
        # Nagle on (Mosquitto's default) holds its later PUBACKs until our delayed ACK, which
        # waits for data going its way (measured: 1,800/s instead of 13,000/s at 25 of 50).
        room = min(free, half - len(self._historical_inflight))
        if room <= 0:
            return False, None  # the backlog's half of the window is (nearly) full
        count = order.take(room, self._loop.time())
        if count == 0:
            return False, order.seconds_until_next()
        after, upto = span
        rows = await self._ahead.take(after, upto, count)
        if not rows:
            order.range_exhausted()
            return True, None
        self._publish(rows, historical=True)
        order.sent_backlog(rows[-1].seq)
        return True, None

    def _publish(self, rows: list[StoredEvent], *, historical: bool) -> None:
        topic_for = self.topic_for
        if historical:
            messages = [(topic_for(e), mark_historical(e.payload)) for e in rows]
            self._historical_inflight.update(e.seq for e in rows)
        else:
            messages = [(topic_for(e), e.payload) for e in rows]
        mids = self._mqtt.publish_many(messages)
        self._inflight.update(zip(mids, (e.seq for e in rows), strict=True))

    async def _sleep(self, timeout_s: float | None = None) -> None:
        """Until woken (a PUBACK, events to read; cleared by the caller) or the timeout."""
        if timeout_s is None:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until everything stored has been sent and acknowledged."""
        deadline = self._loop.time() + timeout_s
        while self._loop.time() < deadline and self._connected.is_set():
            idle = not self._inflight and self._store.pending_count == 0
            if idle and await self._store.depth() == 0:
                return
            await asyncio.sleep(0.02)

    def _goodbye(self) -> int | None:
        """The message that says we leave on purpose (a clean DISCONNECT sends no will): its
        packet id, or None when not connected."""
        if not self._connected.is_set():
            return None
        return self._mqtt.publish(self.status_topic, self._status("offline"), qos=1, retain=True)

    async def _said_goodbye(self) -> None:
        """Wait (at most CLOSE_ACK_TIMEOUT_S) for the PUBACK of the goodbye: without it the
        broker may drop the message with the connection, and nobody learns we left."""
        mid = self._goodbye()
        if mid is None:
            return
        try:
            reason = await self._mqtt.wait_acknowledged(mid, CLOSE_ACK_TIMEOUT_S)
        except ConnectionError as exc:
            log.warning("mqtt_offline_not_sent", host=self._config.host, error=str(exc))
            return
        if reason is None:
            log.warning("mqtt_offline_unacknowledged", host=self._config.host,
                        waited_s=CLOSE_ACK_TIMEOUT_S)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Say `offline` (retained), then disconnect cleanly: DISCONNECT, so no last will.
        Again is a no-op."""
        if self._closed:
            return
        self._closed = self._closing = True
        self._link.close()
        await self._said_goodbye()
        self._set_connected(False)  # from here a disconnect is ours, not news
        await self._mqtt.stop()
        await self._ahead.close()


def _tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """Verify the broker (CA and host name); load our certificate if configured.

    Built at start, so that an unusable file is named in a `CredentialError` instead of a
    traceback.
    """
    ca = str(tls.ca_file) if tls.ca_file else None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise CredentialError(f"mqtt.tls.ca_file: cannot use {ca}: {_file_error(exc)}") from exc
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise CredentialError(
                f"mqtt.tls.cert_file/key_file: cannot use {tls.cert_file} with {tls.key_file}: "
                f"{_file_error(exc)}"
            ) from exc
    return context


def _file_error(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"not a usable PEM file ({exc.reason or exc})"
    return exc.strerror or str(exc)
