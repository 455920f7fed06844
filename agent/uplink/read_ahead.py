"""The backlog read ahead of sending: the next rows are in memory when PUBACKs free slots.

A store read runs on the store's one thread and may wait there behind a commit (tens of
ms while a replay's acknowledgements are deleted); a replay that read only when slots
freed would stall with it. Here the next batch is read while the current one is on the
wire. The rows are reserved by the store as they are read (no degrade drops them) and
released if the range they belong to is given up (the send order changed course).
"""

from __future__ import annotations

import asyncio
from collections import deque

from agent.store import EventStore, StoredEvent


class ReadAhead:
    def __init__(self, store: EventStore, batch: int) -> None:
        self._store = store
        self._batch = batch
        self._rows: deque[StoredEvent] = deque()
        self._span: tuple[int, int] | None = None
        """(after, upto): the rows held follow `after` and end at most at `upto`."""
        self._end = False
        """The store holds nothing more in the span beyond the rows held."""
        self._reading: asyncio.Task[None] | None = None
        self._generation = 0
        """Counts resets: a read that ends after one belongs to a range given up."""

    async def take(self, after: int, upto: int, count: int) -> list[StoredEvent]:
        """Up to `count` events with `after < seq <= upto`, oldest first; [] once the range
        holds no more. Waits for the store only when nothing was read ahead."""
        if self._span != (after, upto):
            await self._reset(after, upto)
        if not self._rows and not self._end:
            self._read_more()
            if self._reading is not None:
                await asyncio.shield(self._reading)
        taken = [self._rows.popleft() for _ in range(min(count, len(self._rows)))]
        if taken:
            self._span = (taken[-1].seq, upto)
        if len(self._rows) < self._batch // 2:
            self._read_more()
        return taken

    def _read_more(self) -> None:
        if self._reading is None and not self._end and self._span is not None:
            after, upto = self._span
            if self._rows:
                after = self._rows[-1].seq
            self._reading = asyncio.ensure_future(self._read(after, upto, self._generation))

    async def _read(self, after: int, upto: int, generation: int) -> None:
        try:
            rows = await self._store.read_after(after, self._batch, upto=upto)
        finally:
            self._reading = None
        if generation != self._generation:  # given up meanwhile
            self._release(rows)
            return
        self._rows.extend(rows)
        self._end = len(rows) < self._batch

    async def _reset(self, after: int, upto: int) -> None:
        if self._reading is not None:
            await asyncio.shield(self._reading)
        self._release(self._rows)
        self._rows.clear()
        self._generation += 1
        self._span, self._end = (after, upto), False

    async def close(self) -> None:
        """Give back what was read and not sent."""
        await self._reset(0, 0)
        self._span = None

    def _release(self, rows: deque[StoredEvent] | list[StoredEvent]) -> None:
        for row in rows:
            self._store.release(row.seq)
