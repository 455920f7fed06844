"""A state file saved in place: two slots written in turn, a torn one never read."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.detect.state_file import SLOT_BYTES, StateFile, read_document


def saved(path: Path, *documents: dict[str, object]) -> StateFile:
    state = StateFile(path, in_place=True)
    for data in documents:
        state.save(data)
        state.wait_saved()
    return state


def test_saves_go_into_two_slots_in_turn_without_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "s.slots"
    saved(path, {"n": 1})
    inode = path.stat().st_ino
    saved(path, {"n": 2}, {"n": 3})
    assert path.stat().st_ino == inode, "written in place, not replaced"
    assert path.stat().st_size == 2 * SLOT_BYTES
    assert read_document(path)[1]["data"] == {"n": 3}
    assert not (tmp_path / "s.slots.tmp").exists()


def test_a_torn_slot_leaves_the_save_before_it(tmp_path: Path) -> None:
    path = tmp_path / "s.slots"
    saved(path, {"n": 1}, {"n": 2})
    number, document = read_document(path)
    assert (number, document["data"]) == (2, {"n": 2})
    raw = bytearray(path.read_bytes())
    newest = (number % 2) * SLOT_BYTES
    raw[newest + 40:newest + 48] = b"\xff" * 8  # a power cut in the middle of the write
    path.write_bytes(bytes(raw))
    assert read_document(path)[1]["data"] == {"n": 1}
    copy = tmp_path / "copy.slots"  # never saved by this process: nothing of it in memory
    copy.write_bytes(bytes(raw))
    assert StateFile(copy, in_place=True).load() == {"n": 1}


def test_a_document_larger_than_a_slot_grows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.slots"
    saved(path, {"n": 1})
    big = {"windows": [[f"device-{i:03d}", 10**18 + i, 60.0] for i in range(300)]}
    saved(path, big)
    assert path.stat().st_size > 2 * SLOT_BYTES and path.stat().st_size % SLOT_BYTES == 0
    assert read_document(path)[1]["data"] == big


def test_a_file_with_no_intact_slot_is_logged_and_read_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "s.slots"
    saved(path, {"n": 1})
    raw = bytearray(path.read_bytes())
    for at in (40, SLOT_BYTES + 40):
        raw[at] ^= 0xFF
    copy = tmp_path / "copy.slots"  # never saved by this process: read from disk
    copy.write_bytes(bytes(raw))
    with capture_logs() as logs:
        assert StateFile(copy, in_place=True).load() == {}
    assert [e["event"] for e in logs] == ["detector_state_unreadable"]


def _written_bytes() -> int:
    with open("/proc/self/io") as io:  # every thread of this process, the writer's included
        return next(int(line.split()[1]) for line in io if line.startswith("write_bytes:"))


def test_a_save_writes_one_block(tmp_path: Path) -> None:
    """One slot a save reaches the disk, not the whole file (a large folio would hold both)."""
    path = tmp_path / "s.slots"
    state = saved(path, {"n": 0}, {"n": 1})
    before = _written_bytes()
    if before == 0:
        pytest.skip("this file system does not count written bytes (tmpfs)")
    for n in range(2, 12):
        state.save({"n": n})
        state.wait_saved()
    assert (_written_bytes() - before) / 10 <= SLOT_BYTES


def test_snapshots_queued_behind_a_write_are_dropped_for_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "s.slots"
    state = saved(path, {"n": 0})
    for n in range(1, 201):  # far faster than a write with its fdatasync
        state.save({"n": n})
    state.wait_saved()
    number, document = read_document(path)
    assert document["data"] == {"n": 200}
    assert number <= 10, f"{number - 1} writes for 200 snapshots: stale ones were written"
