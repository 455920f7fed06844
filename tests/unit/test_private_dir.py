"""The state directory is the agent's alone whatever umask it inherited."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.service.private_dir import prepare_state_dir


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_state_dir_and_what_is_made_in_it_are_private(tmp_path: Path,
                                                             umask_000: None) -> None:
    state = tmp_path / "a" / "state"
    assert prepare_state_dir(state) == []
    (state / "events.sqlite").write_bytes(b"")
    (state / "numba").mkdir()
    assert (mode(state), mode(state / "events.sqlite"), mode(state / "numba")) == (
        0o700, 0o600, 0o700)


def test_an_existing_open_state_dir_is_narrowed_and_says_so(tmp_path: Path,
                                                            umask_000: None) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    (state / ".reserve").write_bytes(b"\0")
    os.chmod(state / ".reserve", 0o666)
    (state / "link").symlink_to("/etc/hostname")
    changes = prepare_state_dir(state)
    assert changes == [f"{state} 0777 -> 0700", f"{state / '.reserve'} 0666 -> 0600"]
    assert mode(state) == 0o700 and mode(state / ".reserve") == 0o600
    assert prepare_state_dir(state) == []


def test_a_state_dir_that_cannot_be_made_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        prepare_state_dir(tmp_path / "file" / "state")
