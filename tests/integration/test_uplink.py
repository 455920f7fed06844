"""The MQTT uplink against a real Mosquitto: delivery, order, acknowledgement, outages."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.config.models import GatewayConfig, MqttConfig
from agent.events import Event
from agent.store import EventStore
from agent.testing import Mosquitto, MqttCollector, wait_until_async
from agent.uplink.client import MqttUplink


def mqtt_config(broker: Mosquitto, **extra: object) -> MqttConfig:
    return MqttConfig.model_validate(
        {"host": broker.host, "port": broker.port, "tls": {"enabled": False}, **extra}
    )


async def test_events_arrive_in_order_on_their_topics_and_are_deleted_once_acked(
    mosquitto: Mosquitto, store: EventStore
) -> None:
    gateway = GatewayConfig(id="gw-1", site="plant7")
    with MqttCollector(mosquitto.host, mosquitto.port, "plant7/gw-1/#") as collector:
        uplink = MqttUplink(mqtt_config(mosquitto), gateway, store)
        sender = asyncio.create_task(uplink.run())
        store.put([Event("window", f"m{i % 2}", i, {"i": i}) for i in range(300)])
        await asyncio.to_thread(
            collector.wait_for, lambda m: len(m) >= 300, timeout_s=20, what="300 events"
        )
        got = collector.snapshot()
        assert [env.data["i"] for _, env in got] == list(range(300))
        assert [env.seq for _, env in got] == list(range(1, 301))
        assert {topic for topic, _ in got} == {"plant7/gw-1/m0/window", "plant7/gw-1/m1/window"}

        async def empty() -> bool:
            return await store.depth() == 0

        await wait_until_async(empty, timeout_s=10, what="acknowledged rows to be deleted")
        sender.cancel()
        await uplink.close()


async def test_leaving_the_uplink_context_says_offline_and_closing_again_is_harmless(
    mosquitto: Mosquitto, store: EventStore
) -> None:
    gateway = GatewayConfig(id="gw-1", site="plant7")
    with MqttCollector(mosquitto.host, mosquitto.port, "plant7/gw-1/#") as collector:
        async with MqttUplink(mqtt_config(mosquitto), gateway, store) as uplink:
            sender = asyncio.create_task(uplink.run())
            await wait_until_async(lambda: uplink.connected, timeout_s=10, what="connected")
            sender.cancel()
        await asyncio.to_thread(collector.wait_for_status, "offline", timeout_s=10)
        await uplink.close()
        assert not uplink.connected
        assert [m[1].status for m in collector.statuses].count("offline") == 1


async def test_events_made_while_the_broker_is_down_arrive_once_it_is_up(
    store: EventStore,
) -> None:
    broker = Mosquitto(persistent=True)
    gateway = GatewayConfig(id="gw-1", site="plant7")
    with broker, MqttCollector(broker.host, broker.port, "#", client_id="cloud") as collector:
        broker.stop()  # the collector's session is kept on disk; it queues what arrives
        uplink = MqttUplink(mqtt_config(broker), gateway, store)
        sender = asyncio.create_task(uplink.run())
        store.put([Event("window", "m1", i, {"i": i}) for i in range(20)])
        await store.flush()
        await asyncio.sleep(0.5)
        assert not uplink.connected and await store.depth() == 20
        broker.start()
        await asyncio.to_thread(
            collector.wait_for, lambda m: len(m) >= 20, timeout_s=30, what="the backlog"
        )
        assert [env.data["i"] for _, env in collector.snapshot()] == list(range(20))
        sender.cancel()
        await uplink.close()


async def test_a_fresh_alarm_overtakes_the_backlog_which_arrives_flagged_and_in_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "backlog.sqlite"
    earlier_run = await EventStore.open(path, "gw-1")
    earlier_run.put([Event("window", "m1", i, {"i": i}) for i in range(100)])
    await earlier_run.close()  # stored by an agent that could not send: a backlog now

    store = await EventStore.open(path, "gw-1", commit_interval_s=0.05)
    writer = asyncio.create_task(store.writer())
    gateway = GatewayConfig(id="gw-1", site="plant7")
    with Mosquitto() as broker, MqttCollector(broker.host, broker.port, "#") as collector:
        uplink = MqttUplink(mqtt_config(broker, replay_rate_per_s=20), gateway, store)
        sender = asyncio.create_task(uplink.run())
        await asyncio.to_thread(collector.wait_for, lambda m: len(m) >= 1, timeout_s=20,
                                what="the replay to start")
        store.put([Event("anomaly", "m1", 999, {"alarm": True})])
        got = await asyncio.to_thread(
            collector.wait_for, lambda m: any(e.kind == "anomaly" for _, e in m), timeout_s=20,
            what="the alarm")
        replayed_before_alarm = sum(e.historical for _, e in got)
        assert replayed_before_alarm < 100, "the alarm did not wait for the whole backlog"
        got = await asyncio.to_thread(collector.wait_for, lambda m: len(m) >= 101, timeout_s=30,
                                      what="the whole backlog")
        sender.cancel()
        await uplink.close()
    backlog = [e for _, e in got if e.kind == "window"]
    assert all(e.historical for e in backlog), "replayed events are flagged"
    assert [e.data["i"] for e in backlog] == list(range(100)), "oldest first, in order"
    [alarm] = [e for _, e in got if e.kind == "anomaly"]
    assert not alarm.historical and alarm.seq == 101
    writer.cancel()
    await store.close()
