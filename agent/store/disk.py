"""Disk space for the store: it never fills the disk itself, and survives one that is full.

The database file may grow only into the free space minus a headroom for its rollback
journal (`PRAGMA max_page_count`, recomputed after each commit), so the store's own
SQLITE_FULL comes before the disk is full and is answered by degradation (freed
pages are reused in place). A disk filled by another program is survived with a
reserve file given back on SQLITE_FULL: a delete needs room in the journal beyond
what it kept, so a store on a disk filled to the last byte could otherwise neither
shrink nor grow. The reserve is claimed again before each commit, as soon as the
disk has room for it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

HEADROOM_BYTES = 1 << 19
"""Never taken by rows: the rollback journal of one bounded transaction."""
RESERVE_BYTES = 1 << 20
LOW_BYTES = HEADROOM_BYTES // 2
"""Free space below which the disk itself is full: a write transaction of the store (at most
64 KiB of payload there) may not fit. Above it, SQLITE_FULL is the store's own limit."""


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
        """The disk itself is (nearly) full: the next transaction may not fit."""
        return self.free_bytes() < LOW_BYTES

    def limit_pages(self, db: sqlite3.Connection) -> None:
        """Let the database file grow only into free space beyond the journal's headroom
        (the reserve, once given back, takes the events waiting; it is claimed again as soon
        as the other program frees the disk)."""
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        room = self.free_bytes() - HEADROOM_BYTES
        db.execute(f"PRAGMA max_page_count = {max(pages + room // page_size, pages, 1)}")

    def hold_reserve(self) -> bool:
        """Claim the reserve if it is not held and the disk has room for it and a
        transaction more; whether it was claimed now."""
        if self._held or self._reserve_bytes <= 0:
            return False
        if self.free_bytes() < self._reserve_bytes + LOW_BYTES:
            return False
        try:
            with open(self.reserve_path, "wb") as reserve:
                reserve.write(b"\0" * self._reserve_bytes)
                reserve.flush()
                os.fsync(reserve.fileno())
        except OSError as exc:
            self.reserve_path.unlink(missing_ok=True)
            log.warning("store_reserve_unavailable", path=str(self.reserve_path), error=str(exc))
            return False
        self._held = True
        return True

    def release_reserve(self) -> bool:
        """Give the reserve's space to the database; whether it was held."""
        held = self._held or self.reserve_path.exists()
        self.reserve_path.unlink(missing_ok=True)
        self._held = False
        return held
