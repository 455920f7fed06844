"""What the store benchmark writes: window events as the agent makes them, and helpers to
measure the process (I/O counters, memory) and to fill a store quickly."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path

from agent.events import WINDOW, Event
from agent.store import EventStore

GATEWAY = "bench-gw"
DEVICES = ("compressor-1", "compressor-2")
# The simulated compressor's tags (tests/e2e/support.py): names and units as a real site has them.
TAGS = (
    ("motor_current_a", "A"),
    ("active_power_w", "W"),
    ("energy_kwh", "kWh"),
    ("discharge_pressure_bar", "bar"),
    ("discharge_temp_c", "°C"),
    ("machine_state", ""),
    ("operating_hours", "h"),
)
POOL_SIZE = 2_000
"""Distinct events cycled through: enough variety for msgpack and SQLite, without holding
a million dicts in memory. Each put still becomes its own row with its own seq."""
FILL_BATCH = 10_000
"""Events per commit when filling a backlog (not measured): few fsyncs, fast."""


def window_event(i: int, rng: random.Random, window_s: float = 60.0) -> Event:
    """A `window` event of 7 tags, as `agent.detect.window` makes it for one device."""
    end_ns = 1_763_900_000_000_000_000 + int(i * window_s * 1e9)
    tags: dict[str, dict[str, object]] = {}
    for name, unit in TAGS:
        low = rng.uniform(0.0, 1000.0)
        high = low + rng.uniform(0.0, 50.0)
        tags[name] = {"n": 120, "bad": 0, "unit": unit, "min": low, "max": high,
                      "mean": (low + high) / 2, "std": rng.uniform(0.0, 10.0),
                      "last": rng.uniform(low, high)}
    data = {"start_ns": end_ns - int(window_s * 1e9), "end_ns": end_ns, "tags": tags}
    return Event(kind=WINDOW, device=DEVICES[i % len(DEVICES)], time_ns=end_ns, data=data)


def event_pool(seed: int = 1) -> list[Event]:
    rng = random.Random(seed)
    return [window_event(i, rng) for i in range(POOL_SIZE)]


def events(count: int, pool: list[Event]) -> Iterator[Event]:
    return itertools.islice(itertools.cycle(pool), count)


async def fill_store(path: Path, count: int, pool: list[Event]) -> None:
    """A backlog of `count` events, written through `EventStore` in large commits."""
    store = await EventStore.open(path, GATEWAY, commit_max_events=FILL_BATCH)
    try:
        stream = events(count, pool)
        while batch := list(itertools.islice(stream, FILL_BATCH)):
            store.put(batch)
            await store.flush()
    finally:
        await store.close()


def io_counters() -> dict[str, int] | None:
    """This process's /proc/self/io (all threads), or None where the kernel does not offer it."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    return {key: int(value) for key, value in (line.split(": ") for line in text.splitlines())}


def status_kb(field: str, pid: int | str = "self") -> int:
    """A `kB` field of /proc/PID/status, e.g. VmRSS (resident now) or VmHWM (peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)
