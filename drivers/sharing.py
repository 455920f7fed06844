"""The vocabulary of data sharing that a device or tag declares in the configuration.

Declared beside the tags (every driver's models use it); enforced by `agent.store.sharing`
between detection and the store, so nothing not shared ever reaches the disk queue.
"""

from __future__ import annotations

from typing import Literal, Protocol

Share = Literal["raw", "aggregates", "events", "none"]
"""raw: every sample, plus aggregates and events. aggregates: window statistics and events.
events: only events (anomalies, limits, state changes), no periodic values. none: nothing
about it leaves the site; it is still used locally."""


class _Shares(Protocol):
    @property
    def share(self) -> Share: ...


def effective_share(device: _Shares, tag_share: Share | None) -> Share:
    """A tag's own `share`, else its device's."""
    return tag_share or device.share
