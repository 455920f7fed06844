"""Detector state that survives a restart and a power cut: small JSON files in the state dir.

A machine's lifetime totals and counters' last raw values (`machines/<device>.json`) and the
window aggregates' counter values (`counters/<device>.json`) are replaced atomically
(temporary file, fsync, rename, fsync of the directory): after a power cut the old file or
the new one, never half of each. Writes run on one worker thread (detectors run on the event
loop, and an fsync on an SD card can take long), joined at interpreter exit so a snapshot
handed over at shutdown reaches the disk. The last snapshot per path is also kept in memory
and read first, so a detector restarted by a reload sees it before it is written. A document
is `{"schema": 1, "data": {...}}` plus its owner's `meta` keys, which older readers ignore.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

SCHEMA = 1

_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detector-state")
_latest: dict[Path, dict[str, Any]] = {}
_latest_lock = threading.Lock()


def _write_atomically(path: Path, document: Mapping[str, Any],
                      like: os.stat_result | None = None) -> None:
    """`like`: the owner and mode the new file takes (those of the file it replaces)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        if like is not None:
            os.fchmod(out.fileno(), stat.S_IMODE(like.st_mode))
            if (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(out.fileno(), like.st_uid, like.st_gid)
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
        """The last saved data, or {} (a missing or unreadable file is a fresh start:
        logged, never fatal: the counters then restart from zero)."""
        data = self.load_document().get("data")
        return dict(data) if isinstance(data, dict) else {}

    def load_document(self) -> dict[str, Any]:
        """The last saved document, `data` and what was saved beside it, or {}."""
        with _latest_lock:
            latest = _latest.get(self.path)
        if latest is not None:
            return dict(latest)
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
        return document

    def save(self, data: dict[str, Any], meta: Mapping[str, Any] | None = None) -> None:
        """Hand a snapshot to the writer thread; returns at once. `meta`: more keys of the
        document, beside `data`."""
        document = {"schema": SCHEMA, **(meta or {}), "data": data}
        with _latest_lock:
            _latest[self.path] = document
        self._pending = _writer.submit(self._write, document)

    def _write(self, document: dict[str, Any]) -> None:
        try:
            _write_atomically(self.path, document)
        except OSError as exc:
            log.error("detector_state_not_saved", path=str(self.path), error=str(exc))

    def replace_now(self, document: Mapping[str, Any]) -> None:
        """Write `document` at once, on the calling thread (a command, not the agent: the
        agent's writes go through `save`), keeping the owner and mode of the file it
        replaces, so that a command run as root leaves a file the agent can read."""
        try:
            like: os.stat_result | None = self.path.stat()
        except FileNotFoundError:
            like = None
        _write_atomically(self.path, {**document, "schema": SCHEMA}, like)

    def wait_saved(self, timeout_s: float = 10.0) -> None:
        """Block until the last snapshot is on disk (tests and the replay tool)."""
        if self._pending is not None:
            self._pending.result(timeout=timeout_s)
