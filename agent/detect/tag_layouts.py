"""A bounded cache of what a detector derives from a batch's tag tuple (its layout).

Each detector turns a batch's tags into index arrays once per distinct tuple and reuses
them: a Modbus poll group sends the same tuple every poll. An OPC UA subscription does not:
each publish brings the items that changed, so the tuples are subsets of the device's tags
in changing orders, and a cache that keeps every one of them grows for as long as the agent
runs. This one keeps at most `capacity` tuples and forgets the oldest first: a layout that
is forgotten is derived again, in microseconds. Lookups stay a plain `dict.get`.
"""

from __future__ import annotations

from typing import TypeVar

V = TypeVar("V")

LAYOUTS_KEPT = 1024
"""Tuples kept per detector: a poll plan's groups and the common subsets of a subscription
fit many times over; a few hundred kB of index arrays at most."""


class TagLayouts(dict[tuple[str, ...], V]):
    """A dict from tag tuple to layout, of at most `capacity` entries (oldest out first)."""

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__()
        self.capacity = capacity or LAYOUTS_KEPT

    def __setitem__(self, tags: tuple[str, ...], layout: V) -> None:
        if len(self) >= self.capacity and tags not in self:
            del self[next(iter(self))]
        super().__setitem__(tags, layout)
