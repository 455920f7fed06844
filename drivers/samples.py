"""What every driver produces: one batch of samples per poll of a read plan.

A batch is column-shaped (one numpy array per field) because the detectors run
one numba kernel call per batch over all of its tags, never one per sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt


class Quality(IntEnum):
    """Quality of one sample, ordered from best to worst (OPC UA's three classes)."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """The values of a set of tags read at one instant from one device.

    `values[i]` belongs to `tags[i]`; a value not GOOD is kept (evidence) but is no good reading
    for a detector. A tag may appear several times (an array value, a burst), in time order.
    Text values travel beside the numbers in `texts`, tag -> text.
    """

    device: str
    tags: tuple[str, ...]
    values: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint8]
    time_ns: int
    """UTC wall-clock time of the read, nanoseconds since the epoch."""
    mono_ns: int
    """Monotonic clock at the read: for windows and durations, immune to clock steps."""
    texts: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.tags)
        if self.values.shape != (n,) or self.quality.shape != (n,):
            raise ValueError(
                f"batch of {n} tags has values {self.values.shape} and quality {self.quality.shape}"
            )
