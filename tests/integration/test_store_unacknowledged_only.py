"""The store writes only what the broker has not acknowledged, on real SQLite files against a
real Mosquitto; sequence numbers stay unique and gap-free across a SIGKILL, and unique
across a power cut (a killed process whose RAM spool is gone)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from agent.config.models import GatewayConfig, MqttConfig
from agent.events import ANOMALY, STORE_HEALTH, WINDOW, Event, decode
from agent.store import EventStore, read_stats
from agent.testing import Mosquitto, MqttCollector, wait_until_async
from agent.uplink.client import MqttUplink


def window(i: int) -> Event:
    return Event(WINDOW, "m1", i, {"i": i, "start_ns": i, "end_ns": i + 1, "tags": {}})


def uplink_for(broker: Mosquitto, store: EventStore) -> MqttUplink:
    config = MqttConfig.model_validate(
        {"host": broker.host, "port": broker.port, "tls": {"enabled": False}})
    return MqttUplink(config, GatewayConfig(id="gw", site="s"), store)


def row_changes(store: EventStore) -> int:
    """Rows this store's connection inserted, updated or deleted since it opened."""
    db = store._db
    assert db is not None
    return db.total_changes


async def test_events_the_broker_acknowledges_in_time_are_never_written(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "e.sqlite", "gw", commit_interval_s=0.2,
                                  spool_dir=tmp_path)
    writer = asyncio.create_task(store.writer())
    with Mosquitto() as broker, MqttCollector(broker.host, broker.port, "s/gw/#") as cloud:
        uplink = uplink_for(broker, store)
        sender = asyncio.create_task(uplink.run())
        await wait_until_async(lambda: uplink.connected, timeout_s=10, what="connected")
        changes_before = row_changes(store)
        for i in range(300):  # 3 s of 100 events/s, ten commit intervals and more
            store.put([window(i)])
            await asyncio.sleep(0.01)
        await asyncio.to_thread(cloud.wait_for, lambda m: len(m) >= 300, timeout_s=20,
                                what="every event")
        await wait_until_async(lambda: store.pending_count == 0, timeout_s=10,
                               what="every event acknowledged")
        assert row_changes(store) == changes_before, "nothing acknowledged in time was written"
        assert await store.depth() == 0
        assert [e.seq for _, e in cloud.snapshot()] == list(range(1, 301))
        sender.cancel()
        await uplink.close()
    writer.cancel()
    await store.close()


async def test_with_the_link_down_events_are_committed_in_batches_alarms_at_once(
    tmp_path: Path,
) -> None:
    """Link down: windows wait for `outage_commit_interval_s` (few, big commits spare the
    card), an alarm is on disk within the commit interval (with what came before it), and
    256 KiB waiting are committed at once; everything arrives once the broker is back."""
    broker = Mosquitto(persistent=True)
    store = await EventStore.open(tmp_path / "e.sqlite", "gw", commit_interval_s=0.2,
                                  outage_commit_interval_s=1.5, spool_dir=tmp_path)
    writer = asyncio.create_task(store.writer())
    with broker, MqttCollector(broker.host, broker.port, "s/gw/#", client_id="cloud") as cloud:
        broker.stop()
        uplink = uplink_for(broker, store)
        sender = asyncio.create_task(uplink.run())
        loop = asyncio.get_running_loop()

        async def depth_is(n: int) -> bool:
            return await store.depth() == n

        # Windows alone: on disk only once the oldest waited the outage interval.
        made = loop.time()
        store.put([window(i) for i in range(50)])
        await wait_until_async(lambda: depth_is(50), timeout_s=1.5 * 3, interval_s=0.02,
                               what="the windows on disk within the outage interval")
        assert loop.time() - made >= 1.5, "committed before the outage interval"
        # An alarm: on disk within the commit interval, the windows before it too.
        made = loop.time()
        store.put([window(i) for i in range(50, 60)])
        store.put([Event(ANOMALY, "m1", 60, {"score": 9.0})])
        await wait_until_async(lambda: depth_is(61), timeout_s=0.2 * 3, interval_s=0.02,
                               what="an alarm on disk within the commit interval")
        # 256 KiB waiting: committed without waiting for the interval.
        big = {f"t{j}": "x" * 1000 for j in range(30)}
        store.put([Event(WINDOW, "m1", 61 + i, {"tags": big}) for i in range(10)])
        await wait_until_async(lambda: depth_is(71), timeout_s=0.2 * 3, interval_s=0.02,
                               what="a full batch on disk at once")
        # The commit is done on the store's thread; memory lets go on the loop's next turn.
        await wait_until_async(lambda: store.pending_count == 0, timeout_s=0.1,
                               what="memory to let go of what is on disk")
        broker.start()
        await asyncio.to_thread(cloud.wait_for, lambda m: len(m) >= 71, timeout_s=30,
                                what="the backlog")
        await wait_until_async(lambda: depth_is(0), timeout_s=10,
                               what="acknowledged rows deleted")
        sender.cancel()
        await uplink.close()
    writer.cancel()
    await store.close()


_CHILD = textwrap.dedent("""
    import asyncio, os, signal, sys
    from pathlib import Path
    from agent.events import Event
    from agent.store import EventStore

    async def main():
        spool = None if sys.argv[3] == "none" else Path(sys.argv[3])
        store = await EventStore.open(Path(sys.argv[1]), "gw", commit_interval_s=60,
                                      spool_dir=spool)
        store.put([Event("window", "m1", i, {"i": i}) for i in range(int(sys.argv[2]))])
        await store.flush()  # some on disk ...
        if sys.argv[4] == "acked":  # ... and deleted, acknowledged: none of them is left
            for seq in range(1, store.last_seq + 1):
                store.ack(seq)
            await store.flush()
        else:
            store.put([Event("window", "m1", i, {"i": i}) for i in range(int(sys.argv[2]))])
        print(store.last_seq, flush=True)  # ... and as many only in memory
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
""")


def run_and_kill(path: Path, events: int, spool_dir: Path | None, *, acked: bool = False) -> int:
    """A process that stores `events`, holds as many more in memory (or, `acked`, has them
    all acknowledged and deleted), and is SIGKILLed."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(events), str(spool_dir or "none"),
         "acked" if acked else "held"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr
    return int(result.stdout.strip())


async def test_after_a_sigkill_the_events_in_memory_come_back_and_numbers_go_on_gap_free(
    tmp_path: Path,
) -> None:
    path = tmp_path / "e.sqlite"
    last = run_and_kill(path, 40, tmp_path)
    assert last == 80
    store = await EventStore.open(path, "gw", spool_dir=tmp_path)
    await store.flush()
    rows = await store.read_after(0, 1000)
    events = [decode(r.payload) for r in rows]
    assert [e.seq for e in events if e.kind == WINDOW] == list(range(1, 81)), \
        "the 40 events only in memory were put back"
    [health] = [e for e in events if e.kind == STORE_HEALTH]
    assert health.data["resent_after_crash"] == 40, "and counted as possible duplicates"
    assert health.seq == 81, "numbers go on without a gap"
    await store.close()


async def test_after_a_sigkill_with_nothing_left_to_send_no_number_is_reused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "e.sqlite"
    last = run_and_kill(path, 40, tmp_path, acked=True)
    assert last == 40
    store = await EventStore.open(path, "gw", spool_dir=tmp_path)
    store.put([window(1)])
    assert store.last_seq == last + 1, "the numbers go on where the killed run left them"
    await store.close()


async def test_after_a_power_cut_no_number_is_reused_and_the_skipped_ones_are_named(
    tmp_path: Path,
) -> None:
    path = tmp_path / "e.sqlite"
    last = run_and_kill(path, 40, None)  # no spool: what a power cut leaves
    store = await EventStore.open(path, "gw", spool_dir=None)
    await store.flush()
    events = [decode(r.payload) for r in await store.read_after(0, 1000)]
    assert [e.seq for e in events if e.kind == WINDOW] == list(range(1, 41)), \
        "what was committed survives; what was only in memory is the loss"
    [health] = [e for e in events if e.kind == STORE_HEALTH]
    first, end = health.data["seq_skipped"]
    assert first == 41 and end >= last, "the lost numbers are named"
    assert health.seq > end, "and never reused"
    await store.close()
    store = await EventStore.open(path, "gw", spool_dir=None)
    store.put([window(1)])
    await store.flush()
    assert store.last_seq == health.seq + 1, "after a clean stop the numbers go on gap-free"
    await store.close()
    assert read_stats(path).last_seq == health.seq + 1
