"""The spool: events not yet on disk, in a file in RAM (`/dev/shm`), for a crash of the agent.

The store sends an event as soon as it exists and writes it to disk only if the broker has
not acknowledged it by its commit; until then it lives in memory, and a copy is appended
here. A SIGKILL or a crash of the process leaves the file to the next start (the kernel
keeps it), which puts the events not acknowledged back into the store and continues the
sequence numbers exactly where they were. A power cut or a reboot empties it: that loss is
the store's bound (one commit interval of unacknowledged events). Nothing here touches the
disk. Records: `E` seq, length, payload (an event); `A` seq (acknowledged or dropped); `H`
seq, the highest number handed out when the file was rewritten. The header names the boot
and the database, so a file is never taken for another store's.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

_MAGIC = b"EASPOOL1"
_RECORD = struct.Struct("<cQI")
_EVENT, _GONE, _HIGH = b"E", b"A", b"H"
DEFAULT_DIR = Path("/dev/shm")


@dataclass
class Recovered:
    """What a spool left by a crashed run holds."""

    events: dict[int, bytes] = field(default_factory=dict)
    """seq -> payload of the events neither acknowledged nor dropped."""
    max_seq: int = 0
    """The highest sequence number the crashed run handed out."""


def default_path(database: Path, directory: Path | None = DEFAULT_DIR) -> Path | None:
    """Where the spool of `database` lives; None where no RAM-backed directory is usable."""
    if directory is None or not os.access(directory, os.W_OK | os.X_OK):
        return None
    digest = hashlib.sha256(str(database.resolve()).encode()).hexdigest()[:16]
    return directory / f"edge-agent-{digest}.spool"


class Spool:
    """Append-only while the agent runs; rewritten with what is left after each commit."""

    def __init__(self, path: Path | None, database: Path, boot: str) -> None:
        self.path = path
        self._header = _MAGIC + _frame(boot.encode()) + _frame(str(database.resolve()).encode())
        self._fd: int | None = None
        self.written = 0
        """Bytes in the spool file now."""

    def recover(self) -> Recovered | None:
        """The events a crashed run left (None: no spool, or one of another boot or store)."""
        if self.path is None:
            return None
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("store_spool_unreadable", path=str(self.path), error=str(exc))
            return None
        if not data.startswith(self._header):
            return None
        found = Recovered()
        at = len(self._header)
        while at + _RECORD.size <= len(data):
            kind, seq, length = _RECORD.unpack_from(data, at)
            end = at + _RECORD.size + length
            if end > len(data):
                break  # the record the crash interrupted: never handed out
            if kind == _EVENT:
                found.events[seq] = data[at + _RECORD.size:end]
                found.max_seq = max(found.max_seq, seq)
            elif kind == _HIGH:
                found.max_seq = max(found.max_seq, seq)
            else:
                found.events.pop(seq, None)
            at = end
        return found

    def start(self, high_seq: int, events: Iterable[tuple[int, bytes]] = ()) -> None:
        """A new spool holding `events` (what is still only in memory) and `high_seq`, the
        highest number handed out so far, atomically."""
        if self.path is None:
            return
        self.close(remove=False)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            data = (self._header + _RECORD.pack(_HIGH, high_seq, 0)
                    + b"".join(_event(seq, p) for seq, p in events))
            os.write(fd, data)
            os.replace(tmp, self.path)
        except OSError as exc:
            self._disable(exc)
            return
        self._fd = fd
        self.written = len(data)

    def add(self, events: Iterable[tuple[int, bytes]]) -> None:
        self._write(b"".join(_event(seq, payload) for seq, payload in events))

    def gone(self, seqs: Iterable[int]) -> None:
        """Events acknowledged by the broker or dropped: not to be put back after a crash."""
        self._write(b"".join(_RECORD.pack(_GONE, seq, 0) for seq in seqs))

    def close(self, *, remove: bool) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if remove and self.path is not None:
            self.path.unlink(missing_ok=True)

    def _write(self, data: bytes) -> None:
        if self._fd is None or not data:
            return
        try:
            os.write(self._fd, data)
            self.written += len(data)
        except OSError as exc:
            self._disable(exc)

    def _disable(self, exc: OSError) -> None:
        """Without a spool the store is as safe as after a power cut (its loss bound)."""
        log.warning("store_spool_disabled", path=str(self.path), error=str(exc),
                    detail="after a crash of the agent, up to one commit interval of events "
                           "not acknowledged by the broker may be lost")
        self.close(remove=True)
        self.path = None


def _frame(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _event(seq: int, payload: bytes) -> bytes:
    return _RECORD.pack(_EVENT, seq, len(payload)) + payload
