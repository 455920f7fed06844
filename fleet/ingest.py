"""`edge-fleet ingest`: the fleet's events from the broker into PostgreSQL, nothing lost.

An MQTT 5 shared subscription (`$share/<group>/<topic>`) spreads one fleet's traffic over
every ingest process of the group; the session is persistent (`clean_start` false, an
expiry), so the broker keeps what arrives while a process is down. Each PUBLISH is
acknowledged only after the transaction holding it committed (paho's manual acks, in the
order received, as MQTT requires): a crash before that makes the broker send it again,
and the database counts the copy as a duplicate. Messages of a connection that has gone
are never acknowledged on the next one (their packet ids mean nothing there).
Retained status messages do not reach shared subscriptions: the status topic is also
subscribed plainly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass
from typing import Any, Self

import paho.mqtt.client as mqtt
import psycopg
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.events import GATEWAY_DEVICE
from agent.uplink.presence import PRESENCE_KIND
from fleet.config import FleetConfig
from fleet.database import BatchResult, FleetDatabase, Received

log = structlog.get_logger(__name__)

STATUS_FILTER = f"+/+/{GATEWAY_DEVICE}/{PRESENCE_KIND}"
"""The agents' retained status messages (`{site}/{gateway}/_gateway/status`)."""


@dataclass(frozen=True, slots=True)
class Incoming:
    message: Received
    mid: int
    qos: int
    generation: int
    """Which connection it came on: an acknowledgement is only valid on that one."""


def fleet_client(config: FleetConfig, *, manual_ack: bool = False) -> mqtt.Client:
    """An MQTT 5 client with the configured id, login and TLS (not yet connected)."""
    m = config.mqtt
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=m.client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    if m.username is not None:
        client.username_pw_set(m.username, m.password.get_secret_value()
                               if m.password is not None else None)
    if m.tls.enabled:
        client.tls_set_context(ssl.create_default_context(
            cafile=str(m.tls.ca_file) if m.tls.ca_file else None))
    return client


def connect_properties(session_expiry_s: float) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = int(session_expiry_s)
    return props


class Ingest:
    """The subscription and the batches; `run` until cancelled (an async context manager)."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.totals = BatchResult()
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue()
        self._generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = self._make_client()
        self._db: FleetDatabase | None = None
        self.subscribed = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        dsn = self.config.database.dsn.get_secret_value()
        self._db = await asyncio.to_thread(FleetDatabase.connect, dsn)
        m = self.config.mqtt
        props = connect_properties(m.session_expiry_s)
        props.ReceiveMaximum = self.config.ingest.receive_maximum
        self._client.connect_async(m.host, m.effective_port, keepalive=30, clean_start=False,
                                   properties=props)
        self._client.loop_start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        if self._db is not None:
            await asyncio.to_thread(self._db.close)

    def _make_client(self) -> mqtt.Client:
        client = fleet_client(self.config, manual_ack=True)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    # --- paho's thread -------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any,
                    _p: Any) -> None:
        if reason.is_failure:
            log.warning("fleet_mqtt_refused", reason=str(reason))
            return
        self._generation += 1
        m = self.config.mqtt
        log.info("fleet_mqtt_connected", host=m.host, port=m.effective_port,
                 session_present=bool(getattr(flags, "session_present", False)))
        client.subscribe([(f"$share/{m.group}/{m.topic}", 1), (STATUS_FILTER, 1)])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        if any(code.is_failure for code in codes):
            log.error("fleet_subscription_refused", codes=[str(c) for c in codes])
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.subscribed.set)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        log.warning("fleet_mqtt_disconnected", reason=str(reason))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        incoming = Incoming(Received(msg.topic, bytes(msg.payload)), msg.mid, msg.qos,
                            self._generation)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, incoming)

    # --- the event loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Commit batches and acknowledge them, until cancelled."""
        settings = self.config.ingest
        while True:
            batch = [await self._queue.get()]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.batch_max_s):
                    while len(batch) < settings.batch_max_events:
                        batch.append(await self._queue.get())
            await self._commit(batch)

    async def _commit(self, batch: list[Incoming]) -> None:
        assert self._db is not None
        while True:
            try:
                result = await asyncio.to_thread(self._db.store, [i.message for i in batch])
                break
            except (psycopg.Error, OSError) as exc:  # down or refused: keep, retry, never ack
                log.warning("fleet_commit_failed", error=f"{type(exc).__name__}: {exc}",
                            events=len(batch))
                await asyncio.sleep(2.0)
                await asyncio.to_thread(self._reconnect_db)
        self.totals.add(result)
        for item in batch:  # in the order received
            if item.qos and item.generation == self._generation:
                self._client.ack(item.mid, item.qos)
        log.debug("fleet_batch_committed", stored=result.stored, duplicates=result.duplicates)

    def _reconnect_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
        try:
            self._db = FleetDatabase.connect(self.config.database.dsn.get_secret_value())
        except (psycopg.Error, OSError) as exc:
            log.warning("fleet_database_unreachable", error=f"{type(exc).__name__}: {exc}")


def leave(config: FleetConfig, timeout_s: float = 10.0) -> bool:
    """End this process's persistent session at the broker (`edge-fleet leave`): the group
    stops giving it a share. What the session still held is dropped by the broker, so run
    it on a process whose queue is drained. True once the broker confirmed."""
    m = config.mqtt
    client = fleet_client(config)
    client.connect(m.host, m.effective_port, clean_start=True,
                   properties=connect_properties(0))
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout_s
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        return client.is_connected()
    finally:
        client.disconnect()
        client.loop_stop()
