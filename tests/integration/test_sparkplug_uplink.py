"""The Sparkplug uplink against a real Mosquitto, its connection lost with messages in flight:
the new session starts with its NBIRTH at seq 0 and carries on by one, with no message of the
old session resent behind it (an MQTT client would), and every event still arrives."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.config.models import AgentConfig
from agent.events import Event
from agent.store import EventStore
from agent.testing import Mosquitto, MqttCollector, TcpProxy, wait_until_async
from agent.uplink.sparkplug import codec
from agent.uplink.sparkplug.uplink import SparkplugUplink

EVENTS = 1500


class AcksHeld(TcpProxy):
    """Once `holding`, the first connection's broker-to-agent bytes (the PUBACKs) are dropped."""

    holding = False

    def passes(self, index: int, from_client: bool, data: bytes) -> bool:
        return from_client or index > 0 or not self.holding


def _config(tmp_path: Path, port: int) -> AgentConfig:
    return AgentConfig.model_validate({
        "gateway": {"id": "gw-1", "site": "lab", "state_dir": str(tmp_path / "state")},
        "mqtt": {"host": "127.0.0.1", "port": port, "tls": {"enabled": False},
                 "format": "sparkplug", "replay_rate_per_s": 5000, "max_inflight": 50},
        "devices": [{"name": "m1", "protocol": "modbus-tcp", "host": "127.0.0.1", "tags": [
            {"name": "x", "table": "input", "address": 0, "type": "float32",
             "report_on_change": True}]}],
    })


def _record(message: object) -> tuple[str, bytes]:
    return message.topic, bytes(message.payload)  # type: ignore[attr-defined]


async def test_a_lost_connection_with_messages_in_flight_renumbers_them_in_the_new_session(
    tmp_path: Path, store: EventStore,
) -> None:
    broker = Mosquitto()
    proxy = AcksHeld(broker.port)
    with broker, MqttCollector(broker.host, broker.port, "spBv1.0/#", record=_record) as host:
        uplink = SparkplugUplink(_config(tmp_path, proxy.port), store)
        sender = asyncio.create_task(uplink.run())
        events = [Event("change", "m1", 10**18 + i, {"tags": {"x": {"value": float(i)}}})
                  for i in range(EVENTS)]
        store.put(events[:300])
        await asyncio.to_thread(host.wait_for, lambda m: len(m) > 300, timeout_s=20,
                                what="the first messages")
        proxy.holding = True
        store.put(events[300:])
        await wait_until_async(lambda: uplink.inflight >= 30, timeout_s=10,
                               what="the in-flight window full of unacknowledged DDATA")
        proxy.cut()  # an MQTT client keeps those to send again on the next connection

        def values(messages: list[tuple[str, bytes]]) -> set[float]:
            return {m.value for topic, payload in messages if "/DDATA/" in topic
                    for m in codec.decode(payload).metrics if isinstance(m.value, float)}

        await asyncio.to_thread(host.wait_for, lambda m: len(values(m)) >= EVENTS,
                                timeout_s=30, what="every event")

        async def empty() -> bool:
            return await store.depth() == 0 and store.pending_count == 0

        await wait_until_async(empty, timeout_s=10, what="every event acknowledged")
        sender.cancel()
        await uplink.close()
    proxy.close()

    got = host.snapshot()
    births = [i for i, (topic, _) in enumerate(got) if "/NBIRTH/" in topic]
    assert len(births) == 2, "born once per connection"
    for start, end in zip(births, [*births[1:], len(got)], strict=True):
        seqs = [codec.decode(p).seq for t, p in got[start:end] if "/NDEATH/" not in t]
        assert seqs == [i % 256 for i in range(len(seqs))], "seq by one from the NBIRTH's 0"
    bdseqs = [next(m.value for m in codec.decode(got[i][1]).metrics if m.name == "bdSeq")
              for i in births]
    assert bdseqs == [0, 1]


async def test_events_of_a_dead_device_wait_for_its_next_birth_and_go_flagged_historical(
    tmp_path: Path, store: EventStore,
) -> None:
    broker = Mosquitto()
    with broker, MqttCollector(broker.host, broker.port, "spBv1.0/#", record=_record) as host:
        uplink = SparkplugUplink(_config(tmp_path, broker.port), store)
        sender = asyncio.create_task(uplink.run())
        await wait_until_async(lambda: uplink.connected, timeout_s=10, what="the births")
        health = {"reason": "", "detail": ""}  # live events from here: a start's are backlog
        store.put([Event("device_health", "m1", 10**18, {**health, "status": "down"}),
                   Event("change", "m1", 10**18 + 1, {"tags": {"x": {"value": 7.0}}})])
        await asyncio.to_thread(host.wait_for, lambda m: any("/DDEATH/" in t for t, _ in m),
                                timeout_s=10, what="DDEATH")
        store.put([Event("device_health", "m1", 10**18 + 2, {**health, "status": "up"})])
        await asyncio.to_thread(host.wait_for, lambda m: len(m) >= 6, timeout_s=10,
                                what="the birth and both data messages")

        async def empty() -> bool:
            return await store.depth() == 0 and store.pending_count == 0

        await wait_until_async(empty, timeout_s=10, what="every event acknowledged")
        sender.cancel()
        await uplink.close()
        await asyncio.to_thread(host.wait_for, lambda m: any("/NDEATH/" in t for t, _ in m),
                                timeout_s=10, what="NDEATH at the close")
    got = [(topic.split("/")[2], codec.decode(payload)) for topic, payload in host.snapshot()]
    assert [kind for kind, _ in got] == ["NBIRTH", "DBIRTH", "DDEATH", "DBIRTH", "DDATA", "DDATA",
                                         "NDEATH"]
    late = got[-2][1].metrics
    assert [m.value for m in late] == [7.0] and late[0].historical, \
        "the change made while the device was dead, after its DBIRTH, flagged historical"
