"""The one interface the runtime knows a device by.

The runtime never knows which protocol it talks: it asks a driver for its read
plans, then loops connect / read(plan) / close. Each plan carries its own
interval, so poll groups with different rates drop in without runtime changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from drivers.errors import DeviceError
from drivers.samples import SampleBatch


class ReadPlan(Protocol):
    """A set of tags that are read together, every `interval_s` seconds."""

    @property
    def name(self) -> str: ...

    @property
    def interval_s(self) -> float: ...

    @property
    def tags(self) -> tuple[str, ...]: ...


class Driver(Protocol):
    """A connection to one device. Methods raise `drivers.errors.DeviceError` subclasses."""

    @property
    def device(self) -> str: ...

    @property
    def plans(self) -> Sequence[ReadPlan]: ...

    @property
    def tag_errors(self) -> Mapping[str, DeviceError]:
        """Tags the device refuses to serve while the rest are read (sent as BAD samples):
        the supervisor reports the device as degraded, once per change of this set."""
        ...

    async def connect(self) -> None: ...

    async def read(self, plan: ReadPlan) -> SampleBatch: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DeviceNotice:
    """A change of a device's health that is not a lost connection (which is a DeviceError):
    e.g. `degraded`/`subscription_stalled` when pushed data stopped arriving and is being
    re-requested. The supervisor turns each into one device_health event."""

    status: str
    reason: str
    detail: str = ""


@runtime_checkable
class StreamingDriver(Driver, Protocol):
    """A driver whose device also pushes data (OPC UA subscriptions).

    `stream()` is iterated after `connect()`, beside the polling of `plans`, until it raises a
    DeviceError (the connection is lost: the supervisor reconnects) or the task is cancelled.
    """

    def stream(self) -> AsyncIterator[SampleBatch | DeviceNotice]: ...
