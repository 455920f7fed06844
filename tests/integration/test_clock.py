"""A gateway that boots with a wrong clock: events are marked, then corrected once it is right."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.acquire.task import tick_detectors
from agent.clock import BOOT_ID, ClockWatch
from agent.events import CLOCK, WINDOW, Event, correct_clock, decode, encode
from agent.store import EventStore
from agent.testing import CapturingSink, SettableClockSync, wait_until_async

HOUR_NS = 3600 * 10**9


def test_a_watch_latches_once_the_kernel_says_synchronized() -> None:
    answers = iter([False, True, False])
    watch = ClockWatch("ntp", probe=lambda: next(answers), check_interval_s=0)
    assert [watch.synchronized() for _ in range(3)] == [False, True, True]
    assert ClockWatch("rtc", probe=lambda: False).synchronized()


def test_correction_shifts_the_time_and_every_timestamp_field_alike() -> None:
    event = Event(WINDOW, "m1", 1_000, {"start_ns": 400, "end_ns": 1_000, "duration_s": 6.0},
                  mono_ns=77)
    env = decode(correct_clock(encode(event, gateway="g", seq=1, boot="b"), 5_000))
    assert (env.time_ns, env.clock, env.mono_ns, env.boot) == (5_000, "corrected", 77, "b")
    assert env.data == {"start_ns": 4_400, "end_ns": 5_000, "duration_s": 6.0}


async def test_events_stored_before_sync_leave_with_corrected_times(tmp_path: Path) -> None:
    synced = False
    store = await EventStore.open(tmp_path / "e.sqlite", "gw", clock_synchronized=lambda: synced)
    # The clock is an hour behind: the event says 10:00, it really happened at 11:00.
    true_ns = time.time_ns()
    wrong_ns = true_ns - HOUR_NS
    mono = time.monotonic_ns()
    store.put([Event(WINDOW, "m1", wrong_ns, {"start_ns": wrong_ns - 10**9, "end_ns": wrong_ns},
                     mono_ns=mono)])
    store.put([Event(WINDOW, "m1", true_ns, {"start_ns": true_ns, "end_ns": true_ns})])
    await store.flush()

    [marked, plain] = [decode(r.payload) for r in await store.read_after(0, 10)]
    assert (marked.clock, marked.boot, marked.time_ns) == ("unsynced", BOOT_ID, wrong_ns)
    assert plain.clock == "synced" and plain.mono_ns is None

    synced = True
    rows = await store.read_after(0, 10)
    fixed = decode(rows[0].payload)
    assert fixed.clock == "corrected"
    assert abs(fixed.time_ns - true_ns) < 10**9, "corrected from the monotonic clock"
    assert fixed.data["end_ns"] - fixed.data["start_ns"] == 10**9
    assert decode(rows[1].payload).time_ns == true_ns, "a synced event is left alone"
    again = await store.read_after(0, 10)
    assert again[0].payload == rows[0].payload, "corrected once, stored: a resend is identical"
    await store.close()


async def test_the_transition_to_synchronized_is_an_event() -> None:
    ntp = SettableClockSync()
    watch = ClockWatch("ntp", probe=ntp, check_interval_s=0)
    sink = CapturingSink()
    ticker = asyncio.create_task(tick_detectors([], sink, 0.01, watch))
    await wait_until_async(lambda: ntp.asked >= 2, timeout_s=5, what="the clock asked twice")
    assert not sink.events  # not synchronized yet: no clock event
    ntp.synchronized = True
    await wait_until_async(lambda: sink.events, timeout_s=5, what="the clock event")
    ticker.cancel()
    [event] = sink.events
    assert event.kind == CLOCK and event.data["boot"] == BOOT_ID
    assert abs(event.data["mono"] - time.monotonic_ns()) < 10 * 10**9
