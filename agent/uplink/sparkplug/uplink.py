"""The uplink as a Sparkplug B Edge Node: the agent's MQTT client (`MqttUplink`: store reads,
QoS 1, acknowledgements, live first) with Sparkplug's session on it.

What changes against the envelope format: the will is NDEATH with this connection's `bdSeq`;
after CONNACK come the subscriptions (NCMD, and the Primary Host's STATE), then the births
(when that host says online), and only then the events, each translated when it is sent.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from agent.config.models import AgentConfig
from agent.events import DecodeError, decode
from agent.store import EventStore, StoredEvent
from agent.uplink.client import CommandHandler, MqttUplink
from agent.uplink.packets import Message, Reason, Will
from agent.uplink.sparkplug import topics
from agent.uplink.sparkplug.bdseq import BdSeq
from agent.uplink.sparkplug.mapping import device_specs, node_specs
from agent.uplink.sparkplug.session import EdgeNode, Outgoing, host_online, is_rebirth_request

log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SparkplugUplink(MqttUplink):
    def __init__(self, config: AgentConfig, store: EventStore, *, config_sha256: str = "",
                 command_topic: str | None = None,
                 on_command: CommandHandler | None = None) -> None:
        spb = config.mqtt.sparkplug
        self.node = EdgeNode(spb.group_id or config.gateway.site, config.gateway.id,
                             device_specs(config), node_specs())
        self._bdseq = BdSeq(config.gateway.state_dir / "sparkplug" / "bdseq")
        self._bdseq_used = True  # the first connection takes the saved number + 1
        self._connack_bdseq = 0
        self._host_id = spb.primary_host_id
        self._host_stamp = -1
        self._session_up = False
        """CONNACK received and the connection not lost since: NDEATH can be said."""
        self._born = False
        self._starting_over: asyncio.Future[None] | None = None
        """The reconnection a Primary Host going offline asks for, while it runs."""
        self._waiting: dict[str, list[int]] = {}
        """Per dead device, the seqs of its events held back until it is born again."""
        super().__init__(config.mqtt, config.gateway, store, config_sha256=config_sha256,
                         command_topic=command_topic, on_command=on_command)

    RESENDS = False
    """What was published on a lost connection would go before our NBIRTH and with the old
    session's `seq`: a host would discard it. It goes again from the store, renumbered."""

    def will(self) -> Will | None:
        """NDEATH with a new `bdSeq`, unless the last number never reached a broker."""
        number = self._bdseq.current
        if number is None or self._bdseq_used:
            number = self._bdseq.next()
            self._bdseq_used = False
        death = self.node.death(number, _now_ms())
        return Will(death.topic, death.payload, qos=1, retain=False)

    def connacked(self, reason: Reason) -> None:
        if not reason.is_failure:
            self._bdseq_used = True
            self._connack_bdseq = self._bdseq.current or 0
        super().connacked(reason)

    # --- the event loop ----------------------------------------------------------------

    def _session_started(self) -> None:
        # What was published on the lost connection goes again, renumbered, from the store.
        dropped = sorted(self._inflight.values())
        self._inflight.clear()
        self._historical_inflight.clear()
        for seq in dropped:
            self._store.release(seq)
        if dropped and self._order is not None:
            self._order.again(dropped[0] - 1, dropped[-1])
            self._wake.set()  # the send loop may wait for PUBACKs that will never come
        self._session_up = True
        self._subscribe_commands()
        node = self.node
        self._mqtt.subscribe(topics.node_topic(node.group, "NCMD", node.node), qos=1)
        if self._host_id is None:
            self._be_born()
        else:  # its retained STATE answers the subscription
            self._mqtt.subscribe(topics.state_topic(self._host_id), qos=1)
            log.info("sparkplug_waiting_for_host", host=self._host_id)

    def _be_born(self) -> None:
        births = self.node.births(self._connack_bdseq, _now_ms())
        for message in births:
            self._mqtt.publish(message.topic, message.payload, qos=message.qos)
        self._born = True
        self._set_connected(True)
        log.info("sparkplug_born", bdseq=self._connack_bdseq, devices=len(births) - 1)

    def disconnected(self, reason: str) -> None:
        self._session_up = self._born = False
        super().disconnected(reason)

    def message_received(self, message: Message) -> None:
        parsed = topics.parse(message.topic)
        if parsed is None:
            super().message_received(message)
            return
        if self._command_topic is not None and message.qos > 0:  # manual acks then
            self._mqtt.ack(message.mid)
        payload = message.payload
        if self._closing or not self._session_up:
            return
        if parsed.message_type == "STATE" and parsed.node == self._host_id:
            self._host_state(payload)
        elif parsed.message_type == "NCMD" and is_rebirth_request(payload) and self._born:
            log.info("sparkplug_rebirth_requested")
            self._be_born()

    def _host_state(self, payload: bytes) -> None:
        state = host_online(payload)
        if state is None or state[1] < self._host_stamp:
            return  # malformed, or older than what we know (spec: compare timestamps)
        online, self._host_stamp = state
        if online and not self._born:
            self._be_born()
        elif not online and self._born and self._starting_over is None:
            # Spec: NDEATH, disconnect, and connect again (births wait for the host's online);
            # nothing is sent meanwhile, the store keeps it.
            log.warning("sparkplug_host_offline", host=self._host_id)
            self._starting_over = asyncio.ensure_future(self._start_over())

    async def _start_over(self) -> None:
        self._born = False
        self._set_connected(False)
        try:
            await self._said_goodbye()
            if self._closing:
                return
            await self._mqtt.stop()
            self.disconnected("the Primary Host went offline")
            if not self._closing:
                self._connect()
        finally:
            self._starting_over = None

    def _publish(self, rows: list[StoredEvent], *, historical: bool) -> None:
        now = _now_ms()
        for event in rows:
            try:
                envelope = decode(event.payload)
            except DecodeError as exc:  # cannot be sent in any format: leave it to the store
                log.error("sparkplug_undecodable_event", seq=event.seq, error=str(exc))
                self._store.release(event.seq)
                continue
            messages = self.node.translate(envelope, historical=historical, now_ms=now)
            if messages is None:  # its device is dead: kept in the store until its DBIRTH
                self._store.release(event.seq)
                self._waiting.setdefault(envelope.device, []).append(event.seq)
                continue
            for message in messages:
                self._send(message, event.seq, historical)

    def _send(self, message: Outgoing, seq: int, historical: bool) -> None:
        if message.message_type == "DBIRTH" and message.device is not None:
            for waiting in self._waiting.pop(message.device, ()):
                if self._order is not None:  # again, behind the birth, as backlog
                    self._order.again(waiting - 1, waiting)
        mid = self._mqtt.publish(message.topic, message.payload, qos=message.qos)
        if message.carries_event:
            self._inflight[mid] = seq
            if historical:
                self._historical_inflight.add(seq)

    def _goodbye(self) -> int | None:
        """NDEATH before a clean DISCONNECT (which makes the broker drop the will)."""
        if not self._session_up:
            return None
        self._session_up = False
        self._set_connected(False)
        death = self.node.death(self._connack_bdseq, _now_ms())
        return self._mqtt.publish(death.topic, death.payload, qos=1, retain=False)

