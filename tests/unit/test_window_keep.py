"""An open window kept in RAM: resumed after a kill of the agent, nothing of it lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from structlog.testing import capture_logs

from agent.detect.kernels.counter import COUNTER_FIELDS
from agent.detect.kernels.window import WINDOW_FIELDS
from agent.detect.window import WindowAggregator
from agent.detect.window_keep import WindowKeep, keep_path
from drivers.samples import SampleBatch

S = 1_000_000_000
TAGS = ("a", "b")


def batch(values: list[float], mono_s: float, tags: tuple[str, ...] = TAGS) -> SampleBatch:
    return SampleBatch(device="m1", tags=tags, values=np.asarray(values, dtype=np.float64),
                       quality=np.zeros(len(values), dtype=np.uint8),
                       time_ns=1_700_000_000 * S + int(mono_s * S), mono_ns=int(mono_s * S))


def keep(tmp_path: Path, boot: str = "boot-1", tags: tuple[str, ...] = TAGS) -> WindowKeep:
    path = keep_path(tmp_path / "state", "m1", directory=tmp_path)
    shapes = ((len(tags), WINDOW_FIELDS), (len(tags), COUNTER_FIELDS))
    return WindowKeep(path, boot, tags, shapes)


def aggregator(tmp_path: Path, **kw: object) -> WindowAggregator:
    return WindowAggregator("m1", list(TAGS), {}, window_s=10, keep=keep(tmp_path, **kw))  # type: ignore[arg-type]


def test_a_window_open_at_a_kill_is_resumed_by_the_next_start(tmp_path: Path) -> None:
    first = aggregator(tmp_path)
    for i in range(5):
        assert first.on_batch(batch([float(i), 1.0], i * 1.0)) == []
    del first  # killed: no flush
    second = aggregator(tmp_path)
    events = []
    for i in range(5, 12):
        events += second.on_batch(batch([float(i), 1.0], i * 1.0))
    [window] = events
    assert window.data["tags"]["a"]["n"] == 10, "the samples before the kill are in it"
    assert window.data["tags"]["a"]["min"] == 0.0 and window.data["tags"]["a"]["max"] == 9.0
    assert window.data["start_ns"] == 1_700_000_000 * S, "it began before the kill"


def test_a_window_due_while_the_agent_was_down_ends_at_its_last_sample(tmp_path: Path) -> None:
    first = aggregator(tmp_path)
    for i in range(3):
        first.on_batch(batch([1.0, 2.0], i * 1.0))
    del first
    second = aggregator(tmp_path)
    [window] = second.on_batch(batch([5.0, 5.0], 60.0))  # back a minute later
    assert window.data["tags"]["a"]["n"] == 3
    assert window.data["end_ns"] == 1_700_000_000 * S + 2 * S, "not stretched over the stop"


def test_a_closed_window_or_another_boot_or_layout_is_not_resumed(tmp_path: Path) -> None:
    first = aggregator(tmp_path)
    first.on_batch(batch([1.0, 2.0], 0.0))
    first.flush(1)  # a clean stop closes it
    assert keep(tmp_path).load() is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("edge-agent-window")], \
        "and leaves nothing in RAM"
    first.on_batch(batch([1.0, 2.0], 1.0))
    assert keep(tmp_path).load() is not None
    with capture_logs() as logs:
        assert keep(tmp_path, boot="boot-2").load() is None, "a reboot: another boot's RAM"
        assert keep(tmp_path, tags=("a",)).load() is None, "the device's tags changed"
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("window_not_resumed", "kept by another boot"),
        ("window_not_resumed", "the device's tags changed since it was kept")], \
        "a window that cannot be resumed is reported, with when it began"
    assert all(e["start_ns"] == 1_700_000_000 * S + S for e in logs)
