"""From OPC UA DataValues to samples: the value, its quality, its time.

Pure functions over plain Python values (asyncua's Variant payloads) or over the arrays of
publish_decode.py, so they are unit-tested without a server.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from drivers.opcua.publish_decode import DataChanges
from drivers.samples import Quality, SampleBatch

FUTURE_TOLERANCE_NS = 2_000_000_000
"""A source timestamp up to this far ahead of the receive time is clock skew, not garbage."""
MAX_AGE_NS = 3600 * 1_000_000_000
"""A source timestamp older than this at reception is not believed (a PLC whose clock was
never set says 1970 or 2000; a queued sample is seconds old, not hours)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_SEVERITY_QUALITY = (Quality.GOOD, Quality.UNCERTAIN, Quality.BAD, Quality.BAD)
"""A StatusCode's severity (its top two bits, OPC UA Part 4 7.39) -> quality: 00 good,
01 uncertain, 10 and 11 bad."""
_QUALITY_OF_SEVERITY = np.array(_SEVERITY_QUALITY, dtype=np.uint8)
"""The same table, for arrays of status codes."""


def quality_of(status_code: int) -> Quality:
    """The quality class from a StatusCode's severity."""
    return _SEVERITY_QUALITY[(status_code >> 30) & 0b11]


@overload
def _believable(source_ns: int, receive_ns: int) -> bool: ...
@overload
def _believable(source_ns: npt.NDArray[np.int64], receive_ns: int) -> npt.NDArray[np.bool_]: ...


def _believable(source_ns: Any, receive_ns: int) -> Any:
    """Whether a source time (ns, a number or an array) lies between MAX_AGE_NS before and
    FUTURE_TOLERANCE_NS after the receive time."""
    return (source_ns >= receive_ns - MAX_AGE_NS) & (source_ns <= receive_ns + FUTURE_TOLERANCE_NS)


def plausible_time_ns(source: datetime | None, receive_ns: int) -> int:
    """The sample's time: its source timestamp when plausible, else the receive time.

    Plausible: present, and from MAX_AGE_NS before to FUTURE_TOLERANCE_NS after the receive
    time; outside that the device's clock is wrong (unset, drifting, local time written as
    UTC) and the gateway's is the better witness.
    """
    if source is None:
        return receive_ns
    if source.tzinfo is None:  # asyncua gives naive UTC datetimes
        source = source.replace(tzinfo=UTC)
    delta = source - _EPOCH
    source_ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return source_ns if _believable(source_ns, receive_ns) else receive_ns


@dataclass
class BatchBuilder:
    """Collects converted samples of one device into one SampleBatch."""

    device: str
    tags: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    quality: list[int] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)

    def add(self, tag: str, value: object, quality: Quality, max_array_length: int) -> None:
        """Add one DataValue's payload: a number, a bool (0/1), a text, or an array of these.

        A value of no usable type (a structure, an empty value) is a BAD sample: evidence that
        the tag was read, never a number the detectors could mistake for a reading.
        """
        if isinstance(value, str):
            if quality == Quality.GOOD:
                self.texts[tag] = value
            else:
                self._number(tag, math.nan, quality)
            return
        if isinstance(value, list | tuple):
            items: Sequence[object] = value[:max_array_length]
            if not items:
                self._number(tag, math.nan, Quality.BAD)
            for item in items:
                self._number(tag, *_as_float(item, quality))
            return
        self._number(tag, *_as_float(value, quality))

    def _number(self, tag: str, value: float, quality: Quality) -> None:
        self.tags.append(tag)
        self.values.append(value)
        self.quality.append(quality)

    def build(self, time_ns: int, mono_ns: int) -> SampleBatch:
        return SampleBatch(
            device=self.device,
            tags=tuple(self.tags),
            values=np.asarray(self.values, dtype=np.float64),
            quality=np.asarray(self.quality, dtype=np.uint8),
            time_ns=time_ns,
            mono_ns=mono_ns,
            texts=dict(self.texts),
        )

    def __len__(self) -> int:
        return len(self.tags) + len(self.texts)


def _as_float(value: object, quality: Quality) -> tuple[float, Quality]:
    if isinstance(value, bool):
        return (1.0 if value else 0.0), quality
    if isinstance(value, int | float):
        number = float(value)
        # NaN or infinity from a float variable is a garbage reading, not a value.
        return number, quality if math.isfinite(number) else Quality.BAD
    return math.nan, Quality.BAD


def batches_of_changes(device: str, changes: DataChanges, tag_of_handle: npt.NDArray[np.int64],
                       names: Sequence[str], receive_ns: int, mono_ns: int) -> list[SampleBatch]:
    """A publish's data changes (publish_decode.py) as batches, by the rules of `BatchBuilder` and
    `plausible_time_ns`: one batch per time, in time order, a tag's values in their order.
    `tag_of_handle[h]`: index in `names` of client handle h's tag, -1 when not ours."""
    handles = changes.handles.astype(np.int64)
    known = handles < len(tag_of_handle)
    tags = np.where(known, tag_of_handle[np.where(known, handles, 0)], -1)
    keep = np.flatnonzero(tags >= 0)
    if len(keep) == 0:
        return []
    tags, values, source = tags[keep], changes.values[keep], changes.source_ns[keep]
    quality = _QUALITY_OF_SEVERITY[(changes.status[keep] >> 30) & 0b11]
    # No value, or NaN or infinity from a float variable: a BAD sample, never a reading.
    quality[~(changes.has_value[keep] & np.isfinite(values))] = Quality.BAD
    times = np.where((source != 0) & _believable(source, receive_ns), source, receive_ns)
    # A server sends each item's queued values together (item 1's ten, then item 2's...):
    # in time order, the items sampled at one instant make one batch, not one each.
    order = np.argsort(times, kind="stable")
    times, values, quality = times[order], values[order], quality[order]
    tag_list = tags[order].tolist()
    starts = [0, *(np.flatnonzero(times[1:] != times[:-1]) + 1).tolist(), len(times)]
    return [SampleBatch(device=device, tags=tuple(names[t] for t in tag_list[a:b]),
                        values=values[a:b], quality=quality[a:b], time_ns=int(times[a]),
                        mono_ns=mono_ns)
            for a, b in itertools.pairwise(starts)]
