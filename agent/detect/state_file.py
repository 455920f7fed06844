"""Detector state that survives a restart and a power cut: small JSON files in the state dir.

A machine's lifetime totals and counters' last raw values (`machines/<device>.json`) and the
window aggregates' counter values (`counters/<device>.json`) are replaced atomically
(temporary file, fsync, rename, fsync of the directory): after a power cut the old file or
the new one, never half of each. Writes run on one worker thread (detectors run on the event
loop, and an fsync on an SD card can take long), joined at interpreter exit so a snapshot
handed over at shutdown reaches the disk. The last snapshot per path is also kept in memory
and read first, so a detector restarted by a reload sees it before it is written. A document
is `{"schema": 1, "data": {...}}` plus its owner's `meta` keys, which older readers ignore.
A file saved often (`in_place`) is instead two fixed slots written in turn, each with its
number and checksum, with `fdatasync`: one data block per save, no rename, no directory
sync; a torn write spoils only the slot being written, and the other one is read.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import threading
import zlib
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


def _json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def write_atomically(path: Path, content: bytes, like: os.stat_result | None = None) -> None:
    """Replace `path` with `content`: after a power cut the old file or the new one (temporary
    file, fsync, rename, fsync of the directory). `like`: the owner and mode the new file
    takes (those of the file it replaces)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        if like is not None:
            os.fchmod(out.fileno(), stat.S_IMODE(like.st_mode))
            if (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(out.fileno(), like.st_uid, like.st_gid)
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """A rename in `directory` made durable (fsync of the directory itself)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SLOT_MAGIC = b"EASLOT01"
_SLOT_HEADER = struct.Struct("<8sQII")
"""magic, the save's number, the length of the JSON text, its CRC-32."""
SLOT_BYTES = 4096
"""One slot: a filesystem block, so that a save writes one block (more for a large document)."""


def _slot_size(length: int) -> int:
    need = _SLOT_HEADER.size + length
    return max(SLOT_BYTES, -(-need // SLOT_BYTES) * SLOT_BYTES)


def _slot_block(number: int, text: bytes, size: int) -> bytes:
    header = _SLOT_HEADER.pack(_SLOT_MAGIC, number, len(text), zlib.crc32(text))
    return (header + text).ljust(size, b"\0")


def _read_slots(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    """The newest intact slot's number and document, or None when neither is intact."""
    size = len(raw) // 2
    best: tuple[int, dict[str, Any]] | None = None
    for at in (0, size):
        magic, number, length, crc = _SLOT_HEADER.unpack_from(raw, at)
        text = raw[at + _SLOT_HEADER.size:at + _SLOT_HEADER.size + length]
        if magic != _SLOT_MAGIC or len(text) != length or zlib.crc32(text) != crc:
            continue
        if best is None or number > best[0]:
            best = (number, json.loads(text))
    return best


def _write_slot(path: Path, number: int, document: Mapping[str, Any]) -> None:
    """Save number `number` into slot `number % 2` in place; a new file, or one too small for
    the document, is made whole (both slots) and put in place atomically."""
    text = _json(document)
    size = _slot_size(len(text))
    block = _slot_block(number, text, size)
    try:
        with open(path, "r+b") as out:
            if os.fstat(out.fileno()).st_size == 2 * size:
                os.pwrite(out.fileno(), block, (number % 2) * size)
                os.fdatasync(out.fileno())
                # Out of the page cache: a kernel with large folios (Linux 6.18 here) keeps
                # the whole file in one, and a save would write both slots.
                os.posix_fadvise(out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                return
    except FileNotFoundError:
        pass
    write_atomically(path, block + block)


def read_document(path: Path) -> tuple[int, Any]:
    """What the file holds on disk, either form, and its save number (0 for a whole file).
    Raises OSError, ValueError or struct.error for a file that cannot be read."""
    raw = path.read_bytes()
    if raw.startswith(_SLOT_MAGIC) or raw[len(raw) // 2:].startswith(_SLOT_MAGIC):
        newest = _read_slots(raw)
        if newest is None:
            raise ValueError("neither slot is intact")
        return newest
    return 0, json.loads(raw)


def wait_all_saved(timeout_s: float = 10.0) -> None:
    """Block until every snapshot handed over so far is written (the writer is FIFO)."""
    try:
        _writer.submit(lambda: None).result(timeout=timeout_s)
    except TimeoutError:
        raise TimeoutError(f"detector state still being written after {timeout_s:g} s "
                           "(a slow disk?)") from None


class StateFile:
    """One JSON document of detector state, saved off the event loop, read at start."""

    def __init__(self, path: Path, *, in_place: bool = False) -> None:
        """`in_place`: saved often, so written into two slots in turn (one block a save)."""
        self.path = path
        self._in_place = in_place
        self._number: int | None = None
        """The last save's number in place (None: read from the file at the first save)."""
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
            _, document = read_document(self.path)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, struct.error) as exc:
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
        with _latest_lock:
            if _latest.get(self.path) is not document:
                return  # a newer snapshot of this file is queued behind: that one is written
        try:
            if self._in_place:
                if self._number is None:  # continue the file's numbers, whoever wrote them
                    try:
                        self._number = read_document(self.path)[0]
                    except (OSError, ValueError, struct.error):
                        self._number = 0
                self._number += 1
                _write_slot(self.path, self._number, document)
            else:
                write_atomically(self.path, _json(document))
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
        write_atomically(self.path, _json({**document, "schema": SCHEMA}), like)

    def wait_saved(self, timeout_s: float = 10.0) -> None:
        """Block until the last snapshot is on disk (tests and the replay tool)."""
        if self._pending is not None:
            self._pending.result(timeout=timeout_s)
