"""An open window's aggregates in RAM (/dev/shm), so that a kill of the agent does not lose it.

A window is closed into an event only every `aggregate.window_s`; a SIGKILL or a crash in
between lost up to that much of every device's aggregates, counted nowhere. Its state (the
accumulators, the counters' last raw values, when it opened and its last sample) is written
over one fixed-size record of a file in /dev/shm after every batch: one `pwrite` to RAM,
nothing to the disk. The next start of the same boot reads it back and resumes the window
(or, if it is already due, closes it at its last sample). A reboot or a power cut empties
/dev/shm: that window is lost, like the events of the last commit interval.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

log = structlog.get_logger(__name__)

DEFAULT_DIR = Path("/dev/shm")
_MAGIC = b"EAWIN001"
_HEAD = struct.Struct("<8sI")
_TIMES = struct.Struct("<qqqq")


@dataclass
class KeptWindow:
    open_mono_ns: int
    open_time_ns: int
    last_mono_ns: int
    last_time_ns: int
    state: np.ndarray
    counters: np.ndarray


def keep_path(state_dir: Path, device: str, directory: Path | None = DEFAULT_DIR) -> Path | None:
    """Where `device`'s open window of the agent with `state_dir` is kept (None: no RAM dir)."""
    if directory is None or not os.access(directory, os.W_OK | os.X_OK):
        return None
    key = f"{state_dir.resolve()}\0{device}".encode()
    return directory / f"edge-agent-window-{hashlib.sha256(key).hexdigest()[:16]}"


class WindowKeep:
    """One device's kept window. The header names the boot and the tags: a file of another
    boot or another tag layout is never taken for this one's."""

    def __init__(self, path: Path | None, boot: str, tags: tuple[str, ...],
                 shape: tuple[tuple[int, int], tuple[int, int]]) -> None:
        self.path = path
        self._boot = boot
        meta = json.dumps({"boot": boot, "tags": list(tags), "shape": shape}).encode()
        self._header = _HEAD.pack(_MAGIC, len(meta)) + meta
        self._shapes = shape
        self._fd: int | None = None

    def load(self) -> KeptWindow | None:
        """The window the last run of this boot left open, if any."""
        if self.path is None:
            return None
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        (state_shape, counter_shape) = self._shapes
        sizes = (int(np.prod(state_shape)) * 8, int(np.prod(counter_shape)) * 8)
        if not data.startswith(self._header) or \
                len(data) != len(self._header) + _TIMES.size + sum(sizes):
            self._report_unusable(data)
            return None
        at = len(self._header)
        open_mono, open_time, last_mono, last_time = _TIMES.unpack_from(data, at)
        if open_mono < 0:
            return None  # closed before the stop
        at += _TIMES.size
        state = np.frombuffer(data, np.float64, sizes[0] // 8, at).reshape(state_shape).copy()
        counters = np.frombuffer(data, np.float64, sizes[1] // 8, at + sizes[0])
        return KeptWindow(open_mono, open_time, last_mono, last_time, state,
                          counters.reshape(counter_shape).copy())

    def _report_unusable(self, data: bytes) -> None:
        """A window left open by a run of another configuration: said exactly, not resumed."""
        if not data.startswith(_MAGIC) or len(data) < _HEAD.size:
            return
        _, length = _HEAD.unpack_from(data)
        at = _HEAD.size + length
        try:
            meta = json.loads(data[_HEAD.size:at])
            open_mono, open_time, _, last_time = _TIMES.unpack_from(data, at)
        except (ValueError, struct.error):
            return
        if open_mono >= 0:
            log.warning("window_not_resumed", path=str(self.path), tags=meta.get("tags"),
                        start_ns=open_time, last_sample_ns=last_time,
                        reason="the device's tags changed since it was kept"
                        if meta.get("boot") == self._boot
                        else "kept by another boot")

    def save(self, open_mono_ns: int, open_time_ns: int, last_mono_ns: int, last_time_ns: int,
             state: np.ndarray, counters: np.ndarray) -> None:
        fd = self._open()
        if fd is None:
            return
        record = (self._header + _TIMES.pack(open_mono_ns, open_time_ns, last_mono_ns,
                                             last_time_ns) + state.tobytes() + counters.tobytes())
        try:
            os.pwrite(fd, record, 0)
        except OSError as exc:
            self._disable(exc)

    def clear(self) -> None:
        """No window open (it was closed into an event)."""
        fd = self._open()
        if fd is None:
            return
        try:
            os.pwrite(fd, _TIMES.pack(-1, 0, 0, 0), len(self._header))
        except OSError as exc:
            self._disable(exc)

    def remove(self) -> None:
        """The device stopped cleanly: its file goes (a later batch would make it again)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _open(self) -> int | None:
        if self._fd is None and self.path is not None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                self._disable(exc)
        return self._fd

    def _disable(self, exc: OSError) -> None:
        log.warning("window_keep_disabled", path=str(self.path), error=str(exc),
                    detail="a kill of the agent loses the open window of this device")
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self.path = None
