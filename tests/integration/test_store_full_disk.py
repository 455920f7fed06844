"""The store on a real 8 MiB disk that fills up, then is filled to the last byte by another
program, then freed, with the broker away until then (issue 19's wedge, as a test).

The store and the uplink run in-process on a real tmpfs, against a real Mosquitto; a
producer makes raw samples, windows and alarms for four devices far faster than a
Raspberry Pi would, so that the disk fills in seconds. Midway, while the disk is full, the
store and the uplink are stopped and started again (a restart). A concurrent reader, as
`edge-agent buffer stats` does, opens the database over and over (`read_stats`, the function
that command calls), holding snapshots that keep the WAL from being reset.
Afterwards every event made is accounted for: received by the cloud, or counted by kind as
dropped; no window is dropped (merged ones arrive), every alarm arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from agent.config.models import GatewayConfig, MqttConfig
from agent.events import ANOMALY, SAMPLES, STORE_HEALTH, WINDOW, Envelope, Event
from agent.store import EventStore, StoreError, read_stats
from agent.testing import Mosquitto, MqttCollector, wait_until_async
from agent.uplink.client import MqttUplink

DEVICES = ("d0", "d1", "d2", "d3")
STEP_NS = 100_000_000
"""Each round stands for 0.1 s of every device (four `share: raw` devices at 0.1 s)."""
TAGS = [f"t{i:02d}" for i in range(20)]
"""A device's tags: its window is about a tenth of its raw samples' bytes, so that the
windows, not only the samples, fill the disk within seconds (and must be merged)."""


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB file system: the agent's state directory on a small SD card."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class Producer:
    """Rounds of events: per device one `samples` (about 4 KB) and one `window` (about
    1.5 KB); an alarm every 20 rounds. Counts what it made, by kind."""

    def __init__(self) -> None:
        self.round = 0
        self.made: Counter[str] = Counter()
        self.alarms: list[int] = []

    def events(self) -> list[Event]:
        r = self.round
        self.round += 1
        start, end = r * STEP_NS, (r + 1) * STEP_NS
        out = []
        for device in DEVICES:
            stats = {"n": 10, "bad": 0, "unit": "A", "min": 1.0, "max": 2.0, "mean": 1.5,
                     "std": 0.1, "last": 2.0}
            out.append(Event(WINDOW, device, end, {"start_ns": start, "end_ns": end,
                                                    "tags": dict.fromkeys(TAGS, stats)}))
            out.append(Event(SAMPLES, device, end, {"round": r, "start_ns": start,
                                                     "samples": [[float(k)] * 4 for k in range(100)]}))
        if r % 20 == 0:
            out.append(Event(ANOMALY, DEVICES[0], end, {"alarm": r}))
            self.alarms.append(r)
        self.made.update(e.kind for e in out)
        return out


class StatsReader:
    """`read_stats` in a loop on a thread of its own, as `watch edge-agent buffer stats`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self.reads = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(StoreError, OSError, sqlite3.Error):
                read_stats(self._path)
                self.reads += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def fill(path: Path) -> None:
    """Another program (dd) takes every last byte of the disk, and takes again what the
    store frees meanwhile (its worker thread may shrink the WAL while dd runs)."""
    for _ in range(50):
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=4k", "oflag=append",
                        "conv=notrunc"], capture_output=True, check=False)
        if os.statvfs(path.parent).f_bavail == 0:
            return
    raise AssertionError(f"the disk never stayed full: {os.statvfs(path.parent).f_bavail} "
                         "blocks free after 50 fills")


class Agent:
    """A store and an uplink as the runtime wires them (writer and sender tasks)."""

    def __init__(self, path: Path, broker: Mosquitto) -> None:
        self._path, self._broker = path, broker

    async def __aenter__(self) -> Self:
        self.store = await EventStore.open(self._path, "gw", commit_interval_s=0.1,
                                           report_interval_s=0.5)
        config = MqttConfig.model_validate({
            "host": self._broker.host, "port": self._broker.port, "tls": {"enabled": False},
            "replay_rate_per_s": 100_000, "replay_after_s": 0,
        })
        self.uplink = MqttUplink(config, GatewayConfig(id="gw", site="s"), self.store)
        self._tasks = [asyncio.create_task(self.store.writer()),
                       asyncio.create_task(self.uplink.run())]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.uplink.close()
        await self.store.close()


async def produce(agent: Agent, producer: Producer, rounds: int) -> None:
    for _ in range(rounds):
        agent.store.put(producer.events())
        await asyncio.sleep(0.01)


def first_copies(messages: list[tuple[str, Envelope]]) -> list[Envelope]:
    seen: set[str] = set()
    out = []
    for _, env in messages:
        if env.id not in seen:
            seen.add(env.id)
            out.append(env)
    return out


def covered(windows: list[Envelope]) -> list[tuple[int, int]]:
    """The union of the windows' spans, as sorted disjoint intervals."""
    spans: list[tuple[int, int]] = []
    for start, end in sorted((w.data["start_ns"], w.data["end_ns"]) for w in windows):
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


@pytest.mark.parametrize("reader", [False, True], ids=["alone", "with-a-stats-reader"])
async def test_a_full_disk_never_wedges_the_store_and_nothing_is_lost_uncounted(
    disk: Path, reader: bool
) -> None:
    path = disk / "events.sqlite"
    reserve = disk / "events.sqlite.reserve"
    hog = disk / "hog"
    producer = Producer()
    # The cloud reads slower than a replay without rate cap sends: no queue limit, so that
    # what the broker acknowledged is also what the cloud gets.
    broker = Mosquitto(persistent=True, extra_config="max_queued_messages 0\n")
    with broker, MqttCollector(broker.host, broker.port, "s/gw/#", client_id="cloud") as cloud:
        broker.stop()  # the cloud's session is kept: what the broker takes later is queued
        with StatsReader(path) if reader else contextlib.nullcontext() as stats_reader:
            async with Agent(path, broker) as agent:
                # The store fills the disk by itself: it degrades.
                async def degraded() -> bool:
                    await produce(agent, producer, 10)
                    stats = await agent.store.stats()
                    return stats.compacted > 0 and stats.dropped.get(SAMPLES, 0) > 0
                await wait_until_async(degraded, timeout_s=60, what="the store to fill the disk")
                # A reader keeps the WAL from being reset: the store may use its reserve for a
                # moment, and claims it again.

                async def reserve_held() -> bool:
                    await produce(agent, producer, 1)
                    return reserve.exists()
                await wait_until_async(reserve_held, timeout_s=30, what="the reserve held")
                # Another program takes the rest of the disk, the reserve's space included
                # once the store gives it back.
                fill(hog)
                for _ in range(300):  # until the store needs its reserve (it may not)
                    await produce(agent, producer, 1)
                    if not reserve.exists():
                        break
                fill(hog)  # the reserve's space too, once given back
                await produce(agent, producer, 50)
            # A restart while the disk is full.
            async with Agent(path, broker) as agent:
                await produce(agent, producer, 50)
                hog.unlink()  # the other program frees the disk
                seq_freed = agent.store.last_seq

                async def recovered() -> bool:
                    await produce(agent, producer, 5)
                    return reserve.exists() and agent.store.last_seq > seq_freed + 100
                await wait_until_async(recovered, timeout_s=30,
                                       what="commits again and the reserve reclaimed")
                broker.start()
                await produce(agent, producer, 100)
                for _ in range(10):  # a last alarm after everything else
                    await produce(agent, producer, 1)

                async def delivered() -> bool:
                    return not agent.store.pending_count and not await agent.store.depth()
                await wait_until_async(delivered, timeout_s=90, interval_s=0.2,
                                       what="every stored event delivered and deleted")
                final = read_stats(path).dropped

                def arrived(messages: list[tuple[str, Envelope]]) -> bool:
                    """The broker acknowledged all of it; the cloud gets it a moment later."""
                    envs = first_copies(messages)
                    kinds = Counter(e.kind for e in envs)
                    return (any(e.kind == STORE_HEALTH and e.data["dropped"] == final
                                for e in envs)
                            and kinds[ANOMALY] == len(producer.alarms)
                            and kinds[SAMPLES] + final.get(SAMPLES, 0) == producer.made[SAMPLES]
                            and sum(e.data.get("windows", 1) for e in envs if e.kind == WINDOW)
                            == producer.made[WINDOW])
                with contextlib.suppress(TimeoutError):  # what is missing is told below
                    await asyncio.to_thread(cloud.wait_for, arrived, timeout_s=30,
                                            what="everything delivered, and a report of "
                                                 "every drop")
            if stats_reader is not None:
                assert stats_reader.reads > 10, "the reader really read beside the store"
        received = first_copies(cloud.snapshot())

    stats = read_stats(path)
    kinds = Counter(e.kind for e in received)
    made = producer.made
    dropped = stats.dropped
    report = _describe(made, kinds, dropped, stats.compacted)
    # Alarms last: every one arrived.
    assert sorted(e.data["alarm"] for e in received if e.kind == ANOMALY) == producer.alarms, report
    # Raw samples: received or counted as dropped, nothing else.
    assert kinds[SAMPLES] + dropped.get(SAMPLES, 0) == made[SAMPLES], report
    assert dropped.get(SAMPLES, 0) > 0, "the raw samples went first"
    # Windows: none dropped; merged ones arrived and stand for every window made.
    windows = [e for e in received if e.kind == WINDOW]
    assert dropped.get(WINDOW, 0) == 0, report
    assert any(w.data.get("windows", 1) > 1 for w in windows), "merged windows arrived"
    assert sum(w.data.get("windows", 1) for w in windows) == made[WINDOW], report
    for device in DEVICES:
        spans = covered([w for w in windows if w.device == device])
        assert spans == [(0, producer.round * STEP_NS)], \
            f"{device}: windows cover {spans[:5]}..., not the whole time without a hole"
    # Every loss is in a store_health report the cloud received.
    health = [e for e in received if e.kind == STORE_HEALTH]
    newest = max(health, key=lambda e: e.seq)  # a replayed older one may arrive after it
    assert newest.data["dropped"] == dropped, (newest, dropped)
    assert not hog.exists() and os.statvfs(disk).f_bavail > 0
    print(f"\nfull disk ({'with' if reader else 'without'} a reader): {report}")


def _describe(made: Counter[str], kinds: Counter[str], dropped: dict[str, int],
              compacted: int) -> str:
    parts: list[Any] = [f"{k}: made {made[k]}, received {kinds[k]}, dropped {dropped.get(k, 0)}"
                        for k in sorted(made)]
    return "; ".join(parts) + f"; merged {compacted}"

