"""A tag's valid range: the values its sensor can really deliver, in the tag's unit.

A transmitter has a measuring range, and what lies outside it is a fault of the sensor, the
wiring or the decoding, not a reading: a 4-20 mA loop under 3.8 mA is a broken wire
(NAMUR NE 43), a register read in the wrong byte order decodes as 10^38. Such a value
passes every check a driver can make (it is a finite number), and one of them in a
detector's learning period poisons what it learns for days. Declared beside the tags
(every driver's tag models use it); applied once, in front of the device's detectors
(`agent.detect.valid_range`), so that an out-of-range sample is BAD for all of them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _ordered(bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = bounds
    if not low < high:
        raise ValueError(f"the low end ({low:g}) must be below the high end "
                         f"({high:g}): [low, high] in the tag's unit")
    return bounds


ValidRange = Annotated[tuple[float, float], AfterValidator(_ordered)]
"""`[low, high]`, in the tag's unit (after `scale` and `offset`), both ends valid."""


def describe_range(bounds: tuple[float, float] | None, unit: str) -> str:
    """For `check`: `, valid -20..150 °C`, or nothing without a range."""
    if bounds is None:
        return ""
    return f", valid {bounds[0]:g}..{bounds[1]:g}" + (f" {unit}" if unit else "")
