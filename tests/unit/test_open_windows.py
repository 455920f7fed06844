"""The open windows listed on disk: written when they roll over (once for all devices), read
at the next start, emptied by a clean stop; an unreadable file is logged and ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from structlog.testing import capture_logs

from agent.detect.kernels.counter import COUNTER_FIELDS
from agent.detect.kernels.window import WINDOW_FIELDS
from agent.detect.open_windows import FILE_NAME, OpenWindows
from agent.detect.state_file import read_document
from agent.detect.window import WindowAggregator
from agent.detect.window_keep import WindowKeep, keep_path
from agent.events import GATEWAY_DEVICE, WINDOWS_LOST
from drivers.samples import SampleBatch

S = 1_000_000_000
T0 = 1_700_000_000 * S
TAGS = ("a", "b")


class Clock:
    def __init__(self) -> None:
        self.mono_ns = 0

    def __call__(self) -> int:
        return self.mono_ns


def batch(device: str, mono_s: float) -> SampleBatch:
    return SampleBatch(device=device, tags=TAGS, values=np.array([1.0, 2.0]),
                       quality=np.zeros(2, dtype=np.uint8),
                       time_ns=T0 + int(mono_s * S), mono_ns=int(mono_s * S))


def aggregator(device: str, ledger: OpenWindows, keep: WindowKeep | None = None,
               ) -> WindowAggregator:
    return WindowAggregator(device, list(TAGS), {}, window_s=10, keep=keep, open_windows=ledger)


def run(ledger: OpenWindows, clock: Clock, devices: list[WindowAggregator],
        seconds: range) -> int:
    """Poll every device once a second and tick the ledger as the supervisor does; the
    number of writes."""
    writes = 0
    for second in seconds:
        clock.mono_ns = second * S
        for device in devices:
            device.on_batch(batch(device._device, second))
        if ledger.save_if_due():
            writes += 1
            ledger.wait_saved()
    return writes


def listed(state_dir: Path) -> list[list[object]]:
    windows: list[list[object]] = read_document(state_dir / FILE_NAME)[1]["data"]["windows"]
    return windows


def test_rollovers_of_all_devices_are_written_once_per_window(tmp_path: Path) -> None:
    clock = Clock()
    ledger = OpenWindows(tmp_path, clock)
    devices = [aggregator("m1", ledger), aggregator("m2", ledger)]
    writes = run(ledger, clock, devices, range(35))
    assert writes == 4, "the first windows, then one write per rollover of both devices"
    assert listed(tmp_path) == [["m1", T0 + 30 * S, 10.0], ["m2", T0 + 30 * S, 10.0]]


def test_the_next_start_reports_the_windows_left_open(tmp_path: Path) -> None:
    clock = Clock()
    ledger = OpenWindows(tmp_path, clock)
    run(ledger, clock, [aggregator("m1", ledger), aggregator("m2", ledger)], range(15))
    # A power cut: no flush. The next start reads the file before any device starts.
    after = OpenWindows(tmp_path, clock)
    aggregator("m1", after), aggregator("m2", after)
    with capture_logs() as logs:
        event = after.report({"m1"})  # m2 is shared `none`: counted, not named
    assert event is not None and event.kind == WINDOWS_LOST and event.device == GATEWAY_DEVICE
    assert event.data["windows"] == [{"dev": "m1", "start_ns": T0 + 10 * S, "window_s": 10.0}]
    assert event.data["lost_total"] == 2 and event.data["saved_ns"] <= event.data["until_ns"]
    [line] = [entry for entry in logs if entry["event"] == "windows_not_closed"]
    assert line["count"] == 2 and line["log_level"] == "warning"
    after.wait_saved()
    assert listed(tmp_path) == [], "named once: a second start does not name them again"
    assert OpenWindows(tmp_path, clock).report() is None


def test_a_window_resumed_from_ram_is_not_lost(tmp_path: Path) -> None:
    clock = Clock()
    shapes = ((len(TAGS), WINDOW_FIELDS), (len(TAGS), COUNTER_FIELDS))

    def keep() -> WindowKeep:
        return WindowKeep(keep_path(tmp_path, "m1", directory=tmp_path), "boot", TAGS, shapes)

    ledger = OpenWindows(tmp_path, clock)
    run(ledger, clock, [aggregator("m1", ledger, keep()), aggregator("m2", ledger)], range(3))
    after = OpenWindows(tmp_path, clock)  # a kill: m1's window is in RAM, m2 kept none
    aggregator("m1", after, keep()), aggregator("m2", after)
    assert [w.device for w in after.lost()] == ["m2"]


def test_a_clean_stop_leaves_nothing_to_report(tmp_path: Path) -> None:
    clock = Clock()
    ledger = OpenWindows(tmp_path, clock)
    devices = [aggregator("m1", ledger), aggregator("m2", ledger)]
    run(ledger, clock, devices, range(5))
    events = [e for d in devices for e in d.flush(T0 + 5 * S)]
    assert len(events) == 2
    ledger.save_now()
    ledger.wait_saved()
    assert listed(tmp_path) == []
    assert OpenWindows(tmp_path, clock).report() is None


def test_a_device_that_goes_quiet_is_taken_off_the_list(tmp_path: Path) -> None:
    clock = Clock()
    ledger = OpenWindows(tmp_path, clock)
    one, two = aggregator("m1", ledger), aggregator("m2", ledger)
    run(ledger, clock, [one, two], range(5))
    for second in range(5, 20):  # m2 stops answering: its window closes at the tick
        clock.mono_ns = second * S
        one.on_batch(batch("m1", second))
        two.on_tick(second * S, T0 + second * S)
        if ledger.save_if_due():
            ledger.wait_saved()
    assert [w[0] for w in listed(tmp_path)] == ["m1"]


def test_an_unreadable_file_is_logged_and_ignored(tmp_path: Path) -> None:
    for text in ('{"schema": 1, "saved_ns": 5, "data": {"windows": [["m1", "x"', "\x00garbage",
                 '{"schema": 1, "saved_ns": 5, "data": {"windows": [["m1"]]}}'):
        state_dir = tmp_path / str(len(text))
        state_dir.mkdir()
        (state_dir / FILE_NAME).write_text(text)
        with capture_logs() as logs:
            ledger = OpenWindows(state_dir, Clock())
        assert ledger.report() is None
        [line] = [entry for entry in logs if entry["event"] == "open_windows_unreadable"]
        assert line["path"] == str(state_dir / FILE_NAME) and "cannot be named" in line["detail"]


def test_a_start_that_fails_before_its_report_leaves_the_list_for_the_next(
        tmp_path: Path) -> None:
    clock = Clock()
    ledger = OpenWindows(tmp_path, clock)
    run(ledger, clock, [aggregator("m1", ledger)], range(3))
    failed = OpenWindows(tmp_path, clock)  # its devices never started
    failed.save_now()  # the stop's save, before any report
    failed.wait_saved()
    assert [w[0] for w in listed(tmp_path)] == ["m1"]
    event = OpenWindows(tmp_path, clock).report()
    assert event is not None and [w["dev"] for w in event.data["windows"]] == ["m1"]
