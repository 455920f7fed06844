"""MQTT uplink: sends stored events at QoS 1 and acknowledges them to the store.

paho-mqtt runs its network loop in its own thread (`loop_start`); its callbacks
are bridged into the event loop here and nowhere else, with
`call_soon_threadsafe`. paho keeps the messages it has not had a PUBACK for
and sends them again after a reconnect, so the in-flight map survives
reconnects; after a restart of the agent the store still holds them all.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config.models import GatewayConfig, MqttConfig
from agent.store import EventStore, StoredEvent

log = structlog.get_logger(__name__)


class MqttUplink:
    def __init__(self, config: MqttConfig, gateway: GatewayConfig, store: EventStore) -> None:
        self._config = config
        self._gateway = gateway
        self._store = store
        self._loop = asyncio.get_running_loop()
        self._connected = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._inflight: dict[int, int] = {}  # paho message id -> store sequence number
        self._cursor = 0  # highest sequence number handed to paho
        self._unreachable_logged = False
        self._client = self._make_client()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def topic_for(self, event: StoredEvent) -> str:
        return self._config.topic.format(
            site=self._gateway.site, gateway=self._gateway.id, device=event.device, kind=event.kind
        )

    def _make_client(self) -> mqtt.Client:
        cfg = self._config
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or self._gateway.id,
            protocol=mqtt.MQTTv5 if cfg.version == "5" else mqtt.MQTTv311,
        )
        if cfg.username is not None:
            password = cfg.password.get_secret_value() if cfg.password is not None else None
            client.username_pw_set(cfg.username, password)
        if cfg.tls.enabled:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.max_inflight_messages_set(cfg.max_inflight)
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect_fail = self._on_connect_fail
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # --- paho thread -> event loop: the only bridge -----------------------------------

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        self._loop.call_soon_threadsafe(self._connect_result, reason)

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        self._loop.call_soon_threadsafe(self._connect_failed)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        self._loop.call_soon_threadsafe(self._disconnected, reason)

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Properties | None
    ) -> None:
        self._loop.call_soon_threadsafe(self._acknowledged, mid, reason)

    # --- event loop side -------------------------------------------------------------

    def _connect_result(self, reason: ReasonCode) -> None:
        if reason.is_failure:
            log.error("mqtt_connect_refused", host=self._config.host, reason=str(reason))
            return
        log.info("mqtt_connected", host=self._config.host, port=self._config.effective_port)
        self._unreachable_logged = False
        self._connected.set()

    def _connect_failed(self) -> None:
        # paho retries with backoff; one line per outage, not one per attempt.
        if not self._unreachable_logged:
            log.warning("mqtt_unreachable", host=self._config.host, port=self._config.effective_port,
                        detail="connection failed, retrying with backoff; events stay stored")
            self._unreachable_logged = True

    def _disconnected(self, reason: ReasonCode) -> None:
        if self._connected.is_set():
            log.warning("mqtt_disconnected", host=self._config.host, reason=str(reason))
        self._connected.clear()

    def _acknowledged(self, mid: int, reason: ReasonCode) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return
        if reason.is_failure:
            # The broker refused it (MQTT 5 PUBACK >= 0x80): keep it in the store for a later run.
            log.error("mqtt_publish_refused", seq=seq, reason=str(reason))
        else:
            self._store.ack(seq)
        self._slot_freed.set()

    async def run(self) -> None:
        """Connect (retrying in the background) and send stored events until cancelled."""
        cfg = self._config
        log.info(
            "mqtt_connecting", host=cfg.host, port=cfg.effective_port, tls=cfg.tls.enabled,
            client_id=cfg.client_id or self._gateway.id,
        )
        self._client.connect_async(cfg.host, cfg.effective_port, keepalive=cfg.keepalive_s)
        self._client.loop_start()
        while True:
            await self._connected.wait()
            if len(self._inflight) >= cfg.max_inflight:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._store.committed.clear()
            batch = await self._store.read_after(
                self._cursor, cfg.max_inflight - len(self._inflight)
            )
            if not batch:
                await self._store.committed.wait()
                continue
            for event in batch:
                info = self._client.publish(self.topic_for(event), event.payload, qos=1)
                self._inflight[info.mid] = event.seq
                self._cursor = event.seq

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until everything stored has been sent and acknowledged."""
        deadline = self._loop.time() + timeout_s
        while self._loop.time() < deadline and self._connected.is_set():
            if not self._inflight and self._store.pending_count == 0:
                newest = await self._store.read_after(self._cursor, 1)
                if not newest:
                    return
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Disconnect cleanly (a DISCONNECT packet, so no last will is published)."""
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._connected.clear()
