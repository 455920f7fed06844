"""The pydantic base of every configuration model: unknown keys refused, frozen, and every
number finite and within a sensible magnitude.

A technician's `nan`, `.inf` or `1e30` is a typo, not a setting: NaN compares false with
everything (a limit that never fires), infinity and 1e30 overflow the arithmetic they enter
(a half-life whose EWMA weight rounds to 0, a duration that never ends). Durations (`_s`)
stay within a year, sample and block counts within 10^9, every other number within 10^15.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, model_validator

MAX_DURATION_S = 366 * 86400.0
MAX_COUNT = 1e9
MAX_MAGNITUDE = 1e15


class Settings(BaseModel):
    """A section of the configuration (subclasses add their fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _sensible_numbers(self) -> Self:
        for name in type(self).model_fields:
            for value in _numbers(getattr(self, name)):
                limit, what = bound_of(name)
                if abs(value) > limit:
                    raise ValueError(f"at .{name}: {value:g} is beyond any sensible {what} "
                                     f"(at most {limit:g})")
        return self


def bound_of(name: str) -> tuple[float, str]:
    """The largest magnitude a field may take, by its unit suffix, and what it measures."""
    if name.endswith("_s") and not name.endswith("_per_s"):  # a rate is not a duration
        return MAX_DURATION_S, "duration in seconds (a year)"
    if name.endswith(("_samples", "_blocks")):
        return MAX_COUNT, "count"
    return MAX_MAGNITUDE, "value"


def _numbers(value: Any) -> list[float]:
    """The numbers of a field: itself, or those of a list or tuple of them (valid_range)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
    return []
