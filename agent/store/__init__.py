"""The durable outgoing queue (`queue`), how it degrades (`degrade`), its disk space
(`disk`), its tables (`schema`) and read-only inspection (`inspect`)."""

from agent.store.disk import HEADROOM_BYTES, RESERVE_BYTES
from agent.store.inspect import export_events, read_stats
from agent.store.queue import EventStore
from agent.store.records import StoredEvent, StoreError, StoreStats

__all__ = [
    "HEADROOM_BYTES",
    "RESERVE_BYTES",
    "EventStore",
    "StoreError",
    "StoreStats",
    "StoredEvent",
    "export_events",
    "read_stats",
]
