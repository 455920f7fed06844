"""Disk space for the store: it never fills the disk itself, and survives one that is full.

The database file may grow only into the free space minus a headroom for the WAL
(`PRAGMA max_page_count`, recomputed after each commit), so the store's own
SQLITE_FULL comes before the disk is full and is answered by degradation (freed
pages are reused in place). A disk filled by another program is survived with a
reserve file given back on SQLITE_FULL: a checkpoint needs room to grow the
database file and a delete needs room in the WAL, so a store on a disk filled to
the last byte could otherwise neither shrink nor grow.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

HEADROOM_BYTES = 1 << 19
"""Never taken by rows: the WAL (checkpointed every 64 pages) and the shared-memory file."""
RESERVE_BYTES = 1 << 20


class DiskSpace:
    def __init__(self, database: Path, reserve_bytes: int) -> None:
        self._directory = database.parent
        self.reserve_path = database.with_name(database.name + ".reserve")
        self._reserve_bytes = reserve_bytes
        self._held = False

    def free_bytes(self) -> int:
        st = os.statvfs(self._directory)
        return st.f_bavail * st.f_frsize

    def low(self) -> bool:
        """Something else has filled the disk into the headroom."""
        return self.free_bytes() < HEADROOM_BYTES

    def limit_pages(self, db: sqlite3.Connection) -> None:
        """Let the database file grow only into free space beyond the headroom."""
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        room = self.free_bytes() - HEADROOM_BYTES
        db.execute(f"PRAGMA max_page_count = {max(pages + room // page_size, pages, 1)}")

    def hold_reserve(self) -> None:
        """Claim the reserve if it is not held and the disk has room for it beyond the headroom."""
        if self._held or self._reserve_bytes <= 0:
            return
        if self.free_bytes() < self._reserve_bytes + HEADROOM_BYTES:
            return
        try:
            with open(self.reserve_path, "wb") as reserve:
                reserve.write(b"\0" * self._reserve_bytes)
                reserve.flush()
                os.fsync(reserve.fileno())
        except OSError as exc:
            self.reserve_path.unlink(missing_ok=True)
            log.warning("store_reserve_unavailable", path=str(self.reserve_path), error=str(exc))
            return
        self._held = True

    def release_reserve(self) -> None:
        self.reserve_path.unlink(missing_ok=True)
        self._held = False
