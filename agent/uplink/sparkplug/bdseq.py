"""The birth/death sequence number (`bdSeq`): one per MQTT connection, 0-255, kept in the state
directory so that a restarted agent continues it.

A host pairs an NDEATH with the NBIRTH of the same connection by it (spec, Operational
Behavior): a restart that began at 0 again could let a late will from the last run kill
the new session. Written (and fsynced) before each CONNECT that carries it in its will.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


class BdSeq:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: int | None = None
        """The number of the connection being made or held; None before the first."""

    def _last(self) -> int | None:
        try:
            return int(self.path.read_text().strip()) % 256
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("sparkplug_bdseq_unreadable", path=str(self.path), error=str(exc))
            return None

    def next(self) -> int:
        """The number for the next connection (0 the very first time), saved before it is used."""
        last = self.current if self.current is not None else self._last()
        number = 0 if last is None else (last + 1) % 256
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            part = self.path.with_suffix(".part")
            with open(part, "w") as file:
                file.write(f"{number}\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(part, self.path)
        except OSError as exc:  # the session works without it; a restart may repeat a number
            log.warning("sparkplug_bdseq_not_saved", path=str(self.path), error=str(exc))
        self.current = number
        return number
