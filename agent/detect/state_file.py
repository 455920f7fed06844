"""Detector state that survives a restart and a power cut: small JSON files in the state dir.

A machine's lifetime totals (energy and hours per state, starts, cycles, resets) and each
counter's last raw value (`<state_dir>/machines/<device>.json`), and the last raw value of
each counter tag of the window aggregates (`<state_dir>/counters/<device>.json`) are
written by replacing the file atomically (write
a temporary file, fsync, rename, fsync the directory): after a power cut the file is the
old or the new one, never half of each. Writes run on one worker thread (a detector is
called on the event loop, and an fsync on an SD card can take long); the worker is joined
at interpreter exit, so a snapshot handed over at shutdown is on disk before the process
ends. The last snapshot handed over for a path is also kept in memory and read first, so
that a detector restarted by a reload sees it even before the worker has written it.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

SCHEMA = 1

_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detector-state")
_latest: dict[Path, dict[str, Any]] = {}
_latest_lock = threading.Lock()


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(document, out, separators=(",", ":"))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def wait_all_saved(timeout_s: float = 10.0) -> None:
    """Block until every snapshot handed over so far is written (the writer is FIFO)."""
    _writer.submit(lambda: None).result(timeout=timeout_s)


class StateFile:
    """One JSON document of detector state, saved off the event loop, read at start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: Future[None] | None = None

    def load(self) -> dict[str, Any]:
        """The last saved document, or {} (a missing or unreadable file is a fresh start:
        logged, never fatal: the counters then restart from zero)."""
        with _latest_lock:
            latest = _latest.get(self.path)
        if latest is not None:
            return dict(latest["data"])
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("detector_state_unreadable", path=str(self.path), error=str(exc))
            return {}
        if not isinstance(document, dict) or document.get("schema") != SCHEMA:
            log.warning("detector_state_unreadable", path=str(self.path),
                        error="unknown schema")
            return {}
        data = document.get("data")
        return dict(data) if isinstance(data, dict) else {}

    def save(self, data: dict[str, Any]) -> None:
        """Hand a snapshot to the writer thread; returns at once."""
        document = {"schema": SCHEMA, "data": data}
        with _latest_lock:
            _latest[self.path] = document
        self._pending = _writer.submit(self._write, document)

    def _write(self, document: dict[str, Any]) -> None:
        try:
            _write_atomically(self.path, document)
        except OSError as exc:
            log.error("detector_state_not_saved", path=str(self.path), error=str(exc))

    def wait_saved(self, timeout_s: float = 10.0) -> None:
        """Block until the last snapshot is on disk (tests and the replay tool)."""
        if self._pending is not None:
            self._pending.result(timeout=timeout_s)
