"""The `machines:` section: which signals of a device tell a machine's state, energy and usage.

A machine names its device and the tags to use: the signal that tells its state (a power
tag in W, or a current tag in A), optionally a run signal, an energy meter's counter and a
cycle or part counter. Thresholds carry the signal's unit in their names (`_w` for a
power tag, `_a` for a current tag), so a threshold in the wrong unit is an error, not a
machine that is never off. Whether the named device and tags exist is checked by
`AgentConfig` (it knows the devices).
"""

from __future__ import annotations

import itertools
import math
import re
import zoneinfo
from typing import Literal

from pydantic import Field, field_validator, model_validator

from drivers.settings import Settings

_SHIFT = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

ENERGY_COUNTER_KWH = {"kWh": 1.0, "Wh": 0.001, "MWh": 1000.0}
"""kWh per unit of the energy counter tag's value (after the tag's own scale)."""


class MachineConfig(Settings):
    name: str
    """The machine's name in its events (several machines may share one device)."""
    device: str
    power_tag: str | None = None
    """Active power in W: tells the state, and the energy when there is no meter counter."""
    current_tag: str | None = None
    """Motor current in A, instead of power_tag: tells the state; energy then comes from the
    meter counter, or from `line_voltage_v` and `power_factor` (three-phase estimate)."""
    line_voltage_v: float | None = Field(default=None, gt=0)
    power_factor: float = Field(default=0.85, gt=0, le=1)
    run_tag: str | None = None
    """A digital signal (non-zero: producing). While it is 0 the state is idle at most."""
    energy_counter_tag: str | None = None
    """A cumulative energy meter reading (a tag with `counter: true`): when given, energy
    per state comes from its increase (rollover and reset handled) instead of integrating."""
    energy_counter_unit: Literal["kWh", "Wh", "MWh"] = "kWh"
    """Unit of the energy counter tag's value (after the tag's scale)."""
    cycle_counter_tag: str | None = None
    """A cycle or part counter (`counter: true`): gives cycles per report and kWh per cycle."""

    idle_above_w: float | None = None
    running_above_w: float | None = None
    overload_above_w: float | None = None
    hysteresis_w: float | None = Field(default=None, ge=0)
    idle_above_a: float | None = None
    running_above_a: float | None = None
    overload_above_a: float | None = None
    hysteresis_a: float | None = Field(default=None, ge=0)
    """Thresholds in the unit of the signal: a state is entered when the signal rises above
    its threshold and left when it falls below the threshold minus the hysteresis. Below
    `idle_above` the machine is off; no overload state without `overload_above`."""
    min_dwell_s: float = Field(default=5.0, ge=0, le=86400)
    """A new state must last this long before it is reported (short blips are ignored)."""
    max_gap_s: float | None = Field(default=None, gt=0, le=86400)
    """Two samples further apart than this are not integrated (the power between them is
    unknown: counted as `unmeasured_s`). Default: 5 poll intervals of the device."""

    report_interval_s: float = Field(default=900.0, ge=1, le=86400)
    """An `energy` event every this many seconds."""
    shifts: list[str] = Field(default_factory=list)
    """Local start times of shifts ("06:00"): an `energy` event for each shift as it ends."""
    timezone: str = "UTC"
    """IANA time zone of the shifts (e.g. Europe/Berlin)."""
    demand_window_s: float = Field(default=900.0, ge=1, le=86400)
    """Peak demand is the highest mean power over consecutive windows of this length."""

    @field_validator("shifts")
    @classmethod
    def _shift_times(cls, shifts: list[str]) -> list[str]:
        for shift in shifts:
            if not _SHIFT.match(shift):
                raise ValueError(f"shift {shift!r} must be a local time HH:MM (e.g. \"06:00\")")
        if len(set(shifts)) != len(shifts):
            raise ValueError("a shift start time is given twice")
        return sorted(shifts)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r} (use an IANA name such as "
                             "Europe/Berlin or UTC)") from None
        return name

    @model_validator(mode="after")
    def _signal_and_thresholds(self) -> MachineConfig:
        if (self.power_tag is None) == (self.current_tag is None):
            raise ValueError("give exactly one of power_tag and current_tag")
        unit, other = ("w", "a") if self.power_tag is not None else ("a", "w")
        given_other = [f for f in self._threshold_fields(other) if getattr(self, f) is not None]
        if given_other:
            signal = "power_tag (W)" if unit == "w" else "current_tag (A)"
            raise ValueError(f"{', '.join(given_other)} do not apply to a {signal}: use the "
                             f"_{unit} thresholds")
        idle, running = getattr(self, f"idle_above_{unit}"), getattr(self, f"running_above_{unit}")
        if idle is None or running is None:
            raise ValueError(f"idle_above_{unit} and running_above_{unit} are required")
        overload = getattr(self, f"overload_above_{unit}")
        levels = [idle, running] + ([overload] if overload is not None else [])
        if any(b <= a for a, b in itertools.pairwise(levels)):
            raise ValueError(f"thresholds must rise: idle_above_{unit} < running_above_{unit}"
                             f" < overload_above_{unit}")
        hysteresis = getattr(self, f"hysteresis_{unit}") or 0.0
        if hysteresis >= idle:
            raise ValueError(f"hysteresis_{unit} must be below idle_above_{unit}, or the "
                             "machine could never be off")
        if self.line_voltage_v is not None and self.current_tag is None:
            raise ValueError("line_voltage_v applies to a current_tag only")
        return self

    @staticmethod
    def _threshold_fields(unit: str) -> list[str]:
        return [f"{k}_{unit}" for k in ("idle_above", "running_above", "overload_above",
                                         "hysteresis")]

    @property
    def signal_tag(self) -> str:
        tag = self.power_tag or self.current_tag
        assert tag is not None  # the validator requires one
        return tag

    def thresholds(self) -> tuple[float, float, float, float]:
        """(idle, running, overload, hysteresis) in the signal's unit; overload inf if unused."""
        unit = "w" if self.power_tag is not None else "a"
        overload = getattr(self, f"overload_above_{unit}")
        return (getattr(self, f"idle_above_{unit}"), getattr(self, f"running_above_{unit}"),
                math.inf if overload is None else overload,
                getattr(self, f"hysteresis_{unit}") or 0.0)

    def watts_per_signal_unit(self) -> float:
        """1 for a power tag; sqrt(3)·U·pf for a current tag with a line voltage; NaN: none."""
        if self.power_tag is not None:
            return 1.0
        if self.line_voltage_v is not None:
            return math.sqrt(3.0) * self.line_voltage_v * self.power_factor
        return math.nan

    def tags(self) -> dict[str, str]:
        """role -> tag name, for the tags this machine uses."""
        roles = {"power_tag": self.power_tag, "current_tag": self.current_tag,
                 "run_tag": self.run_tag, "energy_counter_tag": self.energy_counter_tag,
                 "cycle_counter_tag": self.cycle_counter_tag}
        return {role: tag for role, tag in roles.items() if tag is not None}
