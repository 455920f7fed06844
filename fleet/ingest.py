"""`edge-fleet ingest`: the fleet's events from the broker into PostgreSQL, nothing lost.

An MQTT 5 shared subscription (`$share/<group>/<topic>`) spreads one fleet's traffic over
every ingest process of the group; the session is persistent (`clean_start` false, an
expiry), so the broker keeps what arrives while a process is down. Each PUBLISH is
acknowledged only after the transaction holding it committed: gmqtt (asyncio, no thread)
sends a PUBACK when the message's handler returns, and the handler waits for its batch's
commit; batches commit in order, so acknowledgements go in the order received, as MQTT
requires. A crash before that makes the broker send it again, and the database counts
the copy as a duplicate. Messages of a connection that has gone are never acknowledged on
the next one (their packet ids mean nothing there). Retained status messages do not reach
shared subscriptions: the status topic is also subscribed plainly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from typing import Any, Self

import gmqtt
import psycopg
import structlog

from agent.events import GATEWAY_DEVICE
from agent.uplink.presence import PRESENCE_KIND
from fleet.config import FleetConfig
from fleet.database import BatchResult, FleetDatabase, Received

log = structlog.get_logger(__name__)

STATUS_FILTER = f"+/+/{GATEWAY_DEVICE}/{PRESENCE_KIND}"
"""The agents' retained status messages (`{site}/{gateway}/_gateway/status`)."""
RECONNECT_DELAY_S = 2
"""Between gmqtt's reconnect attempts once a connection was lost."""


class StaleAcknowledgement(Exception):
    """Raised by a handler whose connection has gone: gmqtt then sends no PUBACK for it."""


@dataclass
class _Batch:
    messages: list[Received] = field(default_factory=list)
    committed: asyncio.Event = field(default_factory=asyncio.Event)


def fleet_client(config: FleetConfig, *, clean_start: bool = False,
                 session_expiry_s: float | None = None, **properties: Any) -> gmqtt.Client:
    """An MQTT 5 client with the configured id and login (not yet connected); its PUBACKs
    go when a message's handler returns, not on receipt."""
    m = config.mqtt
    expiry = m.session_expiry_s if session_expiry_s is None else session_expiry_s
    client = gmqtt.Client(m.client_id, clean_session=clean_start,
                          optimistic_acknowledgement=False,
                          session_expiry_interval=int(expiry), **properties)
    if m.username is not None:
        client.set_auth_credentials(m.username, m.password.get_secret_value()
                                    if m.password is not None else None)
    return client


def tls_context(config: FleetConfig) -> ssl.SSLContext | bool:
    """The TLS context to connect with, or False for plain TCP."""
    tls = config.mqtt.tls
    if not tls.enabled:
        return False
    return ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)


class Ingest:
    """The subscription and the batches; `run` until cancelled (an async context manager)."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.totals = BatchResult()
        self.subscribed = asyncio.Event()
        self._generation = 0
        self._batch = _Batch()
        self._filled = asyncio.Event()
        self._full = asyncio.Event()
        self._db: FleetDatabase | None = None
        self._client = fleet_client(config, receive_maximum=config.ingest.receive_maximum)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.set_config({"reconnect_delay": RECONNECT_DELAY_S})
        self._connecting: asyncio.Task[None] | None = None
        self._previous_handler: Any = None

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)
        dsn = self.config.database.dsn.get_secret_value()
        self._db = await asyncio.to_thread(FleetDatabase.connect, dsn)
        self._connecting = asyncio.create_task(self._connect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        self._generation += 1  # what is still waiting is never acknowledged
        self._batch.committed.set()
        if self._client.is_connected:
            with contextlib.suppress(Exception):
                await self._client.disconnect()
        await asyncio.sleep(0)  # the handlers woken above end before the handler goes
        asyncio.get_running_loop().set_exception_handler(self._previous_handler)
        if self._db is not None:
            await asyncio.to_thread(self._db.close)

    async def _connect(self) -> None:
        """The first connection, retried with backoff; gmqtt reconnects after that."""
        m = self.config.mqtt
        delay_s = 1.0
        while True:
            try:
                await self._client.connect(m.host, m.effective_port, ssl=tls_context(self.config),
                                           keepalive=30)
                return
            except (OSError, gmqtt.mqtt.handler.MQTTConnectError) as exc:
                log.warning("fleet_mqtt_unreachable", host=m.host, port=m.effective_port,
                            error=f"{type(exc).__name__}: {exc}", retry_in_s=delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 30.0)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), StaleAcknowledgement):
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    # --- gmqtt's callbacks, on the event loop ----------------------------------------------

    def _on_connect(self, client: gmqtt.Client, flags: int, _rc: int, _p: Any) -> None:
        self._generation += 1
        m = self.config.mqtt
        log.info("fleet_mqtt_connected", host=m.host, port=m.effective_port,
                 session_present=bool(flags))
        client.subscribe([gmqtt.Subscription(f"$share/{m.group}/{m.topic}", qos=1),
                          gmqtt.Subscription(STATUS_FILTER, qos=1)])

    def _on_subscribe(self, _c: gmqtt.Client, _mid: int, codes: Any, _p: Any) -> None:
        if any(code >= 0x80 for code in codes):
            log.error("fleet_subscription_refused", codes=[hex(c) for c in codes])
            return
        self.subscribed.set()

    def _on_disconnect(self, _c: gmqtt.Client, packet: Any, exc: Any = None) -> None:
        log.warning("fleet_mqtt_disconnected", reason=str(exc or packet or "closed"))

    async def _on_message(self, _c: gmqtt.Client, topic: str, payload: bytes, qos: int,
                          _p: Any) -> int:
        """Queued into the open batch; returns (and gmqtt acknowledges) once it committed."""
        generation = self._generation
        batch = self._batch
        batch.messages.append(Received(topic, payload))
        self._filled.set()
        if len(batch.messages) >= self.config.ingest.batch_max_events:
            self._full.set()
        await batch.committed.wait()
        if qos and generation != self._generation:
            raise StaleAcknowledgement(topic)
        return 0

    # --- the batches -----------------------------------------------------------------------

    async def run(self) -> None:
        """Commit batches (the next one fills meanwhile), until cancelled."""
        settings = self.config.ingest
        while True:
            await self._filled.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.batch_max_s):
                    await self._full.wait()
            batch, self._batch = self._batch, _Batch()
            self._filled.clear()
            self._full.clear()
            await self._commit(batch.messages)
            batch.committed.set()

    async def _commit(self, messages: list[Received]) -> None:
        assert self._db is not None
        while True:
            try:
                result = await asyncio.to_thread(self._db.store, messages)
                break
            except (psycopg.Error, OSError) as exc:  # down or refused: keep, retry, never ack
                log.warning("fleet_commit_failed", error=f"{type(exc).__name__}: {exc}",
                            events=len(messages))
                await asyncio.sleep(2.0)
                await asyncio.to_thread(self._reconnect_db)
        self.totals.add(result)
        log.debug("fleet_batch_committed", stored=result.stored, duplicates=result.duplicates)

    def _reconnect_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
        try:
            self._db = FleetDatabase.connect(self.config.database.dsn.get_secret_value())
        except (psycopg.Error, OSError) as exc:
            log.warning("fleet_database_unreachable", error=f"{type(exc).__name__}: {exc}")


async def leave(config: FleetConfig, timeout_s: float = 10.0) -> bool:
    """End this process's persistent session at the broker (`edge-fleet leave`): the group
    stops giving it a share. What the session still held is dropped by the broker, so run
    it on a process whose queue is drained. True once the broker confirmed."""
    m = config.mqtt
    client = fleet_client(config, clean_start=True, session_expiry_s=0)
    client.set_config({"reconnect_retries": 0})
    try:
        async with asyncio.timeout(timeout_s):
            await client.connect(m.host, m.effective_port, ssl=tls_context(config))
    except (TimeoutError, OSError, gmqtt.mqtt.handler.MQTTConnectError):
        return False
    await client.disconnect()
    return True
