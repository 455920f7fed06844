"""One MQTT client connection, on the event loop: TCP (and TLS), CONNECT with a will, retries
with backoff, keep-alive, and QoS 1 publishes kept until their PUBACK.

What happens is told to a `Listener`, on the loop, as it happens: each failed attempt with
its exception, the socket up, the CONNACK, the loss; PUBACKs in batches, one call per
read. A publish not acknowledged is sent again (DUP) on the next connection, unless the
owner's format forbids it (`resend=False`: it is forgotten at CONNACK instead). The
broker's Receive Maximum is kept; what exceeds it waits here. Written to the socket once
per turn of the loop, whatever the number of packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import structlog

from agent.uplink import packets
from agent.uplink.packets import Message, ProtocolError, Reason, Will

log = structlog.get_logger("agent.uplink")

MIN_RETRY_S = 1.0
MAX_RETRY_S = 60.0


class Listener(Protocol):
    """What the connection tells its owner, always on the event loop."""

    def will(self) -> Will | None:
        """Asked before each attempt: the will of the connection about to be made."""

    def connect_failed(self, exc: BaseException) -> None:
        """No connection: TCP, TLS or the connect timeout failed (retried with backoff)."""

    def socket_opened(self) -> None:
        """TCP and TLS are up and CONNECT is on its way."""

    def connacked(self, reason: Reason) -> None: ...

    def disconnected(self, reason: str) -> None:
        """The connection is gone (after `socket_opened`); another attempt follows."""

    def acknowledged(self, acks: list[tuple[int, Reason]]) -> None:
        """PUBACKs as (packet id, reason), in the order they came."""

    def message_received(self, message: Message) -> None: ...


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    client_id: str
    v5: bool
    keepalive_s: int
    connect_timeout_s: float
    tls: ssl.SSLContext | None
    username: str | None = None
    password: str | None = None
    clean_start: bool = True
    session_expiry_s: int = 0
    receive_maximum: int | None = None
    """Ours, sent in CONNECT (MQTT 5): how many QoS 1 messages the broker may send unacked."""
    manual_ack: bool = False
    """Incoming QoS 1 messages are acknowledged by the owner (`ack`), not on arrival."""
    resend: bool = True
    """Unacknowledged publishes go again on the next connection."""


class MqttConnection:
    def __init__(self, settings: Settings, listener: Listener) -> None:
        self._settings = settings
        self._listener = listener
        self._v5 = settings.v5
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._connacked = False
        self._out: list[bytes] = []
        self._flush_pending = False
        self._unacked: dict[int, bytes] = {}  # packet id -> PUBLISH, in publish order
        self._waiting: deque[int] = deque()  # of those, not written on this connection
        self._on_wire = 0
        self._window = 0xFFFF  # the broker's Receive Maximum
        self._next_mid = 0
        self._subscriptions: dict[int, str] = {}  # SUBSCRIBE packet id -> topic filter
        self._ack_waiters: dict[int, asyncio.Future[Reason]] = {}
        self._topics: dict[str, bytes] = {}
        self._last_sent = 0.0
        self._ping_sent: float | None = None

    @property
    def connected(self) -> bool:
        """CONNACK (success) received and the connection not lost since."""
        return self._connacked

    def start(self) -> None:
        """Connect in the background, and again whenever the connection is lost."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """DISCONNECT (no will) if connected, then close; no more attempts. Again is harmless."""
        transport, task = self._transport, self._task
        self._task = None
        if transport is not None and self._connacked:
            self._write(packets.DISCONNECT_PACKET)
            self._flush()
        if transport is not None:
            transport.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._disconnected()  # a `start()` after this waits for its own CONNACK

    # --- sending -----------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Send (QoS 0 only while connected); returns the packet id (0 at QoS 0)."""
        if qos:
            return self.publish_many([(topic, payload)], retain=retain)[0]
        if self._connacked:
            self._write(packets.publish(self._topic(topic), payload, 0, qos=0, retain=retain,
                                        v5=self._v5))
        return 0

    def publish_many(self, messages: list[tuple[str, bytes]], *, retain: bool = False) -> list[int]:
        """(topic, payload) pairs at QoS 1, in order; their packet ids. What the broker's
        Receive Maximum leaves room for is written now, the rest when PUBACKs free room."""
        v5, unacked = self._v5, self._unacked
        room = self._window - self._on_wire if self._connacked and not self._waiting else 0
        mids: list[int] = []
        ready: list[bytes] = []
        for topic, payload in messages:
            mid = self._new_mid()
            packet = packets.publish(self._topic(topic), payload, mid, qos=1, retain=retain,
                                     v5=v5)
            unacked[mid] = packet
            mids.append(mid)
            if len(ready) < room:
                ready.append(packet)
            else:
                self._waiting.append(mid)
        if ready:
            self._on_wire += len(ready)
            self._write_all(ready)
        return mids

    def _topic(self, topic: str) -> bytes:
        """Encoded once per topic: a replay sends the same few all along."""
        encoded = self._topics.get(topic)
        if encoded is None:
            encoded = self._topics[topic] = packets.text(topic)
        return encoded

    async def wait_acknowledged(self, mid: int, timeout_s: float) -> Reason | None:
        """The PUBACK's reason for `mid`, or None if none came within `timeout_s`."""
        if mid not in self._unacked:
            return None
        waiter = self._ack_waiters[mid] = self._loop.create_future()
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return None
        finally:
            self._ack_waiters.pop(mid, None)

    def ack(self, mid: int) -> None:
        """Acknowledge an incoming QoS 1 message (with `manual_ack`)."""
        if self._connacked:
            self._write(packets.puback(mid))

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe on this connection (a new connection needs it again)."""
        if self._connacked:
            mid = self._new_mid()
            self._subscriptions[mid] = topic
            self._write(packets.subscribe(topic, qos, mid, v5=self._v5))

    def _new_mid(self) -> int:
        for _ in range(0xFFFF):
            self._next_mid = self._next_mid % 0xFFFF + 1
            mid = self._next_mid
            if mid not in self._unacked and mid not in self._subscriptions:
                return mid
        raise RuntimeError("all 65,535 MQTT packet identifiers are in use")

    def _write(self, packet: bytes) -> None:
        self._write_all((packet,))

    def _write_all(self, packet_list: list[bytes] | tuple[bytes, ...]) -> None:
        self._out.extend(packet_list)
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        out, self._out = self._out, []
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))
            self._last_sent = self._loop.time()

    def _send_waiting(self) -> None:
        room = self._window - self._on_wire
        ready = []
        while room > 0 and self._waiting:
            packet = self._unacked.get(self._waiting.popleft())
            if packet is not None:
                ready.append(packet)
                room -= 1
        if ready:
            self._on_wire += len(ready)
            self._write_all(ready)

    # --- receiving ---------------------------------------------------------------------

    def _heard(self) -> None:
        """Bytes came from the broker: any PINGREQ is answered."""
        self._ping_sent = None

    def _pubacks(self, acks: list[tuple[int, Reason]]) -> None:
        """PUBACKs read on the fast path (`packets.pubacks`)."""
        unacked = self._unacked
        self._acknowledged([ack for ack in acks if unacked.pop(ack[0], None)])

    def _acknowledged(self, acks: list[tuple[int, Reason]]) -> None:
        """`acks`: those that were ours (taken out of the unacknowledged already)."""
        if not acks:
            return
        self._on_wire -= len(acks)
        if self._ack_waiters:
            for mid, reason in acks:
                waiter = self._ack_waiters.get(mid)
                if waiter is not None and not waiter.done():
                    waiter.set_result(reason)
        self._send_waiting()
        self._listener.acknowledged(acks)

    def _received(self, found: list[tuple[int, bytes]]) -> None:
        acks: list[tuple[int, Reason]] = []
        for first, body in found:
            kind = first >> 4
            if kind == packets.PUBACK:
                mid, reason = packets.read_ack(body)
                if self._unacked.pop(mid, None) is not None:
                    acks.append((mid, reason))
            elif kind == packets.PUBLISH:
                message = packets.read_publish(first, body, v5=self._v5)
                if message.qos and not self._settings.manual_ack:
                    self._write(packets.puback(message.mid))
                self._listener.message_received(message)
            elif kind == packets.CONNACK:
                self._connack(packets.read_connack(body, v5=self._v5))
            elif kind == packets.SUBACK:
                self._suback(*packets.read_suback(body, v5=self._v5))
            elif kind == packets.DISCONNECT:
                reason = packets.read_disconnect(body)
                raise ProtocolError(f"the broker disconnected us: {reason}")
        self._acknowledged(acks)

    def _connack(self, connack: packets.Connack) -> None:
        if not connack.reason.is_failure:
            self._connacked = True
            maximum = connack.properties.get(packets.RECEIVE_MAXIMUM, 0xFFFF)
            self._window = maximum if isinstance(maximum, int) and maximum > 0 else 0xFFFF
            self._on_wire = 0
            if self._settings.resend:
                waiting = set(self._waiting)
                self._unacked = {mid: packet if mid in waiting else packets.as_duplicate(packet)
                                 for mid, packet in self._unacked.items()}
                self._waiting = deque(self._unacked)
            else:
                self._unacked.clear()
                self._waiting.clear()
        self._listener.connacked(connack.reason)
        if self._connacked:
            self._send_waiting()
        elif self._protocol is not None:  # refused: the broker closes it too
            self._protocol.drop(f"refused: {connack.reason}")

    def _suback(self, mid: int, reason: Reason) -> None:
        topic = self._subscriptions.pop(mid, None)
        if topic is not None and reason.is_failure:
            log.warning("mqtt_subscribe_refused", topic=topic, reason=str(reason),
                        hint="check the broker's access rules for this client")

    # --- the connection's life -----------------------------------------------------------

    async def _run(self) -> None:
        delay = MIN_RETRY_S
        while True:
            protocol = _Protocol(self)
            try:
                await self._open(protocol)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                self._listener.connect_failed(exc)
            else:
                self._listener.socket_opened()
                reason = await self._live(protocol)
                self._disconnected()
                self._listener.disconnected(reason)
                if protocol.accepted:
                    delay = MIN_RETRY_S
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)

    async def _open(self, protocol: _Protocol) -> None:
        cfg = self._settings
        will = self._listener.will()
        tls = cfg.tls is not None
        transport, _ = await asyncio.wait_for(
            self._loop.create_connection(
                lambda: protocol, cfg.host, cfg.port, ssl=cfg.tls,
                server_hostname=cfg.host if tls else None,
                ssl_handshake_timeout=cfg.connect_timeout_s if tls else None,
            ),
            cfg.connect_timeout_s,
        )
        self._transport, self._protocol = transport, protocol
        self._out.clear()
        self._write(packets.connect(
            cfg.client_id, v5=cfg.v5, keepalive_s=cfg.keepalive_s, clean_start=cfg.clean_start,
            will=will, username=cfg.username, password=cfg.password,
            session_expiry_s=cfg.session_expiry_s, receive_maximum=cfg.receive_maximum,
        ))

    async def _live(self, protocol: _Protocol) -> str:
        """Until the connection is lost: why. Drops it without a CONNACK in time, and keeps it
        alive with PINGREQ (dropped if no answer within the keep-alive)."""
        cfg = self._settings
        keepalive = cfg.keepalive_s
        self._last_sent = self._loop.time()
        self._ping_sent = None
        deadline = self._loop.time() + cfg.connect_timeout_s
        while not protocol.lost.done():
            step = min(keepalive / 4, 1.0) if self._connacked else deadline - self._loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(protocol.lost), max(step, 0.01))
            if protocol.lost.done():
                break
            now = self._loop.time()
            if not self._connacked:
                if now >= deadline:
                    protocol.drop(f"no CONNACK within {cfg.connect_timeout_s:g} s")
            elif self._ping_sent is not None and now - self._ping_sent >= keepalive:
                protocol.drop(f"no answer to PINGREQ within {keepalive} s")
            elif self._ping_sent is None and now - self._last_sent >= keepalive / 2:
                self._ping_sent = now
                self._write(packets.PINGREQ_PACKET)
        return protocol.lost.result()

    def _disconnected(self) -> None:
        self._connacked = False
        self._transport = self._protocol = None
        self._out.clear()
        self._on_wire = 0
        self._subscriptions.clear()
        for waiter in self._ack_waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("the connection was lost"))


class _Protocol(asyncio.Protocol):
    """Bytes in, packets out to the connection; the reason the connection ended."""

    def __init__(self, owner: MqttConnection) -> None:
        self._owner = owner
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._why = ""
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.accepted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        self._owner._heard()
        try:
            while buffer and not self._why:
                acks, used = packets.pubacks(buffer)
                if used:
                    del buffer[:used]
                    self._owner._pubacks(acks)
                    continue
                found, used = packets.split(buffer, limit=1)
                if not found:
                    break
                del buffer[:used]
                self._owner._received(found)
        except ProtocolError as exc:
            self.drop(str(exc))
        if self._owner.connected:
            self.accepted = True

    def drop(self, why: str) -> None:
        self._why = self._why or why
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            why = self._why or (str(exc) if exc else "the broker closed the connection")
            self.lost.set_result(why)
