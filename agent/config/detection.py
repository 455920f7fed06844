"""The `detectors:` section: anomaly and limit rules, each for one device's tag(s).

One model per detector kind, discriminated by `kind`; units are in the names (`_s`,
`_per_s`, `_samples`, `_z`, `_sigma`). The defaults are starting points, not results: the
`pca` ones were picked on labelled SKAB files (docs/detection.md, "oracle"); tune a rule on
the machine's own recordings with `edge-agent replay`.
Whether the device and tags exist is checked by `AgentConfig` (it knows the devices).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from drivers.settings import Settings

MachineStateName = Literal["off", "idle", "running", "overload"]
MACHINE_STATES: tuple[str, ...] = ("off", "idle", "running", "overload")
"""The states of `machines:` (agent/detect/kernels/state.py), in their order."""


@dataclass(frozen=True, slots=True)
class Gate:
    """A machine (of the rule's device), the states a rule runs in, in their order, and how
    long the machine must have been in them before a sample counts (`agent/detect/gate.py`)."""

    machine: str
    states: tuple[str, ...]
    settle_s: float = 0.0

    @property
    def codes(self) -> frozenset[int]:
        """The states as `kernels.state` numbers them (OFF = 0 ... OVERLOAD = 3)."""
        return frozenset(MACHINE_STATES.index(s) for s in self.states)

    def describe(self) -> str:
        """`compressor in running, overload (settled 30 s)`: for logs, status, check, keys."""
        settle = f" (settled {self.settle_s:g} s)" if self.settle_s else ""
        return f"{self.machine} in {', '.join(self.states)}{settle}"


class _Rule(Settings):
    device: str
    tags: list[str] = Field(min_length=1)
    name: str | None = None
    """Names the rule in events and scores; `<kind>-<n>` (n-th rule of the device) when absent."""
    min_duration_s: float = Field(default=0.0, ge=0, le=30 * 86400)
    """An episode starts only once the condition held this long (its start is the first sample)."""
    clear_duration_s: float = Field(default=0.0, ge=0, le=30 * 86400)
    """An episode ends only once the condition was clear this long."""
    context_samples: int = Field(default=10, ge=0, le=1000)
    """Good samples sent before the start and after the end of an episode, per tag."""
    while_states: list[MachineStateName] | None = Field(default=None, min_length=1)
    """Only while the machine is in one of these states does the rule learn and score
    (`agent/detect/gate.py`): a pump's vibration means nothing while it stands. Null: always."""
    machine: str | None = None
    """The machine (of `machines:`, on the rule's device) whose state `while_states` reads;
    may be left out when the device has one machine."""
    settle_s: float = Field(default=0.0, ge=0, le=86400)
    """With `while_states`: samples count only once the machine has been in those states
    this long (a start-up's transients, a temperature still rising)."""

    @model_validator(mode="after")
    def _tags_unique(self) -> _Rule:
        seen: set[str] = set()
        for tag in self.tags:
            if tag in seen:
                raise ValueError(f"tag {tag!r} is listed twice")
            seen.add(tag)
        return self

    @model_validator(mode="after")
    def _gate_complete(self) -> _Rule:
        if self.while_states is None:
            for key, unset in (("machine", self.machine is None),
                               ("settle_s", self.settle_s == 0.0)):
                if not unset:
                    raise ValueError(f"{key} applies with while_states only: add while_states "
                                     "(e.g. [running]) or drop it")
        elif len(set(self.while_states)) != len(self.while_states):
            raise ValueError("while_states lists a state twice")
        return self

    def gate(self, sole_machine: str | None) -> Gate | None:
        """The machine states the rule runs in (None: always); `sole_machine`: the device's
        one machine, which a rule that names none reads. Rules of one gate share their
        detectors."""
        if self.while_states is None:
            return None
        machine = self.machine or sole_machine
        if machine is None:  # AgentConfig refuses it: the device has no machine or several
            raise ValueError(f"the rule on {self.device!r} names no machine for while_states")
        return Gate(machine, tuple(s for s in MACHINE_STATES if s in self.while_states),
                    self.settle_s)


class LimitsRule(_Rule):
    """Specification limits: how long and how far a tag was outside them (warranty evidence)."""

    kind: Literal["limits"]
    low: float | None = None
    high: float | None = None
    hysteresis: float = Field(default=0.0, ge=0)
    """In the tag's unit: a violation ends once the value is this far back inside."""
    max_rate_per_s: float | None = Field(default=None, gt=0)
    """Largest allowed change per second between two polls (tag unit per second)."""

    @model_validator(mode="after")
    def _something_to_check(self) -> LimitsRule:
        if self.low is None and self.high is None and self.max_rate_per_s is None:
            raise ValueError("a limits rule needs low, high or max_rate_per_s")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class ZScoreRule(_Rule):
    """A value far from its own recent normal (robust streaming z-score)."""

    kind: Literal["zscore"]
    threshold_z: float = Field(default=4.0, gt=0)
    clear_z: float | None = Field(default=None, ge=0)
    """The episode ends under this z; half of threshold_z when absent."""
    baseline_halflife_samples: float = Field(default=1000.0, ge=1)
    """How fast the normal (EWMA mean and variance) follows the tag."""
    smoothing_halflife_samples: float = Field(default=0.0, ge=0)
    """EWMA smoothing of the value before it is compared (0: none)."""
    warmup_samples: int = Field(default=100, ge=2)
    direction: Literal["both", "high", "low"] = "both"


class NoveltyRule(_Rule):
    """The univariate default: transitions of a tag never seen before, or a shift of its level
    (`kernels.novelty`). Learns online; the warm-up only sets the range of its levels."""

    kind: Literal["novelty"]
    threshold_z: float = Field(default=4.25, gt=0)
    """Novelty over its own normal, in its standard deviations."""
    level_z: float = Field(default=3.5, gt=0)
    """The smoothed value away from its slow mean, in standard deviations."""
    hold_samples: int = Field(default=60, ge=0, le=100_000)
    """The episode ends this many samples after the last one over a threshold."""
    warmup_samples: int = Field(default=750, ge=2, le=10_000)
    """Samples whose range sets the levels; no score before them."""


class DriftRule(_Rule):
    """A slow, lasting shift of the mean away from what the warm-up learned (CUSUM)."""

    kind: Literal["drift"]
    warmup_samples: int = Field(default=200, ge=2)
    slack_sigma: float = Field(default=0.5, ge=0)
    """Shifts smaller than this (in warm-up standard deviations) are not accumulated."""
    threshold_sigma: float = Field(default=8.0, gt=0)
    clear_sigma: float | None = Field(default=None, ge=0)
    """The episode ends once the CUSUM falls under this; half of threshold_sigma when absent."""


class StuckRule(_Rule):
    """A flat-lined sensor, and a sensor that stops delivering good samples."""

    kind: Literal["stuck"]
    stuck_after_s: float | None = Field(default=600.0, gt=0)
    """Flat (no change larger than min_change) for this long; off when null."""
    min_change: float = Field(default=0.0, ge=0)
    silent_after_s: float | None = Field(default=120.0, gt=0)
    """No good sample for this long; off when null."""

    @model_validator(mode="after")
    def _something_to_check(self) -> StuckRule:
        if self.stuck_after_s is None and self.silent_after_s is None:
            raise ValueError("a stuck rule needs stuck_after_s or silent_after_s")
        if self.while_states is not None and self.silent_after_s is not None:
            raise ValueError(
                "silent_after_s watches whether the sensor delivers, whatever the machine "
                "does, and a rule with while_states sees no sample outside those states: set "
                "silent_after_s: null here and watch the delivery in a rule without "
                "while_states")
        return self


class PcaRule(_Rule):
    """Tags of one machine that no longer agree with each other (streaming PCA, T² and Q)."""

    kind: Literal["pca"]
    tags: list[str] = Field(min_length=2, max_length=32)
    warmup_samples: int = Field(default=400, ge=10, le=100_000)
    """Rows of normal operation the model is learned on, from the start."""
    explained_variance: float = Field(default=0.9, gt=0, le=1)
    smoothing_halflife_samples: float = Field(default=6.6, ge=0)
    """EWMA smoothing of T² and Q (0: none)."""
    input_smoothing_halflife_samples: float = Field(default=0.0, ge=0)
    """EWMA smoothing of the rows themselves before T² and Q (0: none): the multivariate
    EWMA, for small lasting shifts that one row's noise hides; T² and Q are rescaled so that
    the limits stay those of single rows."""
    threshold_factor: float = Field(default=1.0, gt=0)
    """Times the thresholds: the largest smoothed T² and Q seen while learning, or the
    control limits at `confidence`."""
    confidence: float | None = Field(default=None, ge=0.5, lt=1)
    """Control limits of T² and Q at this confidence (e.g. 0.999: one row in 1,000 of normal
    operation over a limit) instead of the largest values seen while learning; meant for
    unsmoothed statistics (smoothing_halflife_samples 0)."""
    clear_ratio: float = Field(default=1.0, gt=0, le=1)
    """The episode ends once the score (1.0 = at the threshold) is under this."""


class MsetRule(_Rule):
    """Tags of one machine that no longer agree with its normal states (MSET: a memory of
    normal rows, the similarity-weighted estimate of each row, Wald's SPRT on each residual)."""

    kind: Literal["mset"]
    tags: list[str] = Field(min_length=2, max_length=32)
    warmup_samples: int = Field(default=400, ge=10, le=100_000)
    """Rows of normal operation the memory and the residuals' sigmas are learned on."""
    memory_vectors: int = Field(default=40, ge=2, le=256)
    """Learning rows kept as the memory of normal states (at least 2 per tag: each tag's
    lowest and highest; at most warmup_samples)."""
    bandwidth: float = Field(default=1.0, gt=0)
    """Width of the Gaussian similarity, in learning standard deviations times the square
    root of the number of tags."""
    shift_sigma: float = Field(default=2.0, gt=0)
    """The mean shift of a residual the SPRT tests for, in sigmas of the learning residuals."""
    false_alarm: float = Field(default=1e-6, gt=0, lt=0.5)
    """The SPRT's alpha: the chance that one of its decisions calls normal rows shifted."""
    missed_alarm: float = Field(default=0.01, gt=0, lt=0.5)
    """The SPRT's beta: the chance that one of its decisions calls shifted rows normal."""


class RmsRule(_Rule):
    """The vibration level of a fast signal: running RMS against a limit."""

    kind: Literal["rms"]
    window_samples: float = Field(default=64.0, ge=1)
    """Time constant of the running mean square, in samples."""
    remove_mean: bool = True
    max_rms: float | None = Field(default=None, gt=0)
    """Absolute limit in the tag's unit (e.g. an ISO 20816 zone boundary)."""
    max_ratio: float | None = Field(default=3.0, gt=1)
    """Limit relative to the RMS learned over warmup_samples."""
    min_limit_rms: float | None = Field(default=None, gt=0)
    """The learned limit (max_ratio x the learned RMS) is never below this, in the tag's
    unit: a level learned near the sensor's noise (a machine off while it learned) would
    otherwise alarm on any normal vibration."""
    warmup_samples: int = Field(default=1000, ge=2)
    clear_fraction: float = Field(default=0.9, gt=0, le=1)

    @model_validator(mode="after")
    def _something_to_check(self) -> RmsRule:
        if self.max_rms is None and self.max_ratio is None:
            raise ValueError("an rms rule needs max_rms or max_ratio")
        _check_min_limit("the rule", self.max_rms, self.max_ratio, self.min_limit_rms)
        return self


def _check_min_limit(what: str, max_rms: float | None, max_ratio: float | None,
                     min_limit_rms: float | None) -> None:
    """min_limit_rms bounds the learned limit from below: it needs one, under max_rms."""
    if min_limit_rms is None:
        return
    if max_ratio is None:
        raise ValueError(f"{what}: min_limit_rms bounds the learned limit, and max_ratio is "
                         "null (no learned limit): set max_ratio or drop min_limit_rms")
    if max_rms is not None and min_limit_rms >= max_rms:
        raise ValueError(f"{what}: min_limit_rms ({min_limit_rms:g}) must be below max_rms "
                         f"({max_rms:g}), the limit never exceeds max_rms")


_BAND_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


class Band(Settings):
    """A frequency band of a `band_rms` rule and its limits (in the tag's unit)."""

    name: str
    """In events (`band`) and scores (`rule:tag:band`): say what it watches (`bearing`)."""
    low_hz: float = Field(ge=0)
    high_hz: float = Field(gt=0)
    """The band holds the bins whose centre frequency f is low_hz <= f < high_hz (and the
    Nyquist bin when high_hz is the Nyquist frequency)."""
    max_rms: float | None = Field(default=None, gt=0)
    """Absolute limit of the band's RMS, in the tag's unit."""
    max_ratio: float | None = Field(default=3.0, gt=1)
    """Limit relative to the band's RMS learned over the rule's warmup_blocks."""
    min_limit_rms: float | None = Field(default=None, gt=0)
    """The learned limit is never below this, in the tag's unit (as `rms`'s)."""

    @field_validator("name")
    @classmethod
    def _name_is_an_identifier(cls, name: str) -> str:
        if not _BAND_NAME.match(name):
            raise ValueError(f"band name {name!r} must start with a letter and hold only "
                             "letters, digits, '_', '.' or '-'")
        return name

    @model_validator(mode="after")
    def _a_band_with_a_limit(self) -> Band:
        if self.low_hz >= self.high_hz:
            raise ValueError(f"band {self.name!r}: low_hz ({self.low_hz:g}) must be below "
                             f"high_hz ({self.high_hz:g})")
        if self.max_rms is None and self.max_ratio is None:
            raise ValueError(f"band {self.name!r} needs max_rms or max_ratio")
        _check_min_limit(f"band {self.name!r}", self.max_rms, self.max_ratio,
                         self.min_limit_rms)
        return self


class BandRmsRule(_Rule):
    """The vibration level of a fast signal in frequency bands, from a short FFT.

    `sample_rate_hz` is required: a batch has one time for all its samples, and the time between
    batches says nothing about the spacing inside one, so the rate is the sensor's or device's.
    """

    kind: Literal["band_rms"]
    sample_rate_hz: float = Field(gt=0, le=10_000_000)
    fft_samples: int = 1024
    """Block length N, a power of two: the resolution is sample_rate_hz / N."""
    window: Literal["hann", "hamming", "rectangular"] = "hann"
    overlap: float = 0.5
    """Share of a block the next one repeats: 0 or 0.5 (a block every N/2 samples, which
    gives back what the window's tapered ends take from each block)."""
    continuous: bool = False
    """True: consecutive batches continue one stream (a fast poll, a subscription, a device
    that hands out its buffer in pieces) and a block may span them. False: each read is its
    own capture (an array value): a batch of another time starts a new one, and a block
    never spans two (batches of the same time, e.g. a replayed capture row by row, are one)."""
    bands: list[Band] = Field(min_length=1, max_length=16)
    average_blocks: float = Field(default=4.0, ge=1)
    """Time constant, in blocks, of the exponential average of each band's mean square
    (1: none); averaging narrows the estimate's scatter on noise."""
    warmup_blocks: int = Field(default=20, ge=1, le=100_000)
    """Blocks the band levels are learned on (for max_ratio), from the start."""
    clear_fraction: float = Field(default=0.9, gt=0, le=1)

    @field_validator("fft_samples")
    @classmethod
    def _power_of_two(cls, n: int) -> int:
        if not 16 <= n <= 16384 or n & (n - 1):
            nearest = min((1 << b for b in range(4, 15)), key=lambda p: (abs(p - n), p))
            raise ValueError(f"must be a power of two, 16 to 16384; the nearest is {nearest}")
        return n

    @field_validator("overlap")
    @classmethod
    def _half_or_none(cls, overlap: float) -> float:
        if overlap not in (0.0, 0.5):
            raise ValueError("must be 0 (blocks side by side) or 0.5 (half overlapping)")
        return overlap

    @property
    def resolution_hz(self) -> float:
        """The width of one bin: sample_rate_hz / fft_samples."""
        return self.sample_rate_hz / self.fft_samples

    def bins(self, band: Band) -> tuple[int, int]:
        """The band's first and last one-sided DFT bin (inclusive)."""
        df = self.resolution_hz
        first = math.ceil(band.low_hz / df - 1e-9)
        last = math.ceil(band.high_hz / df - 1e-9) - 1
        if band.high_hz >= self.sample_rate_hz / 2:
            last = self.fft_samples // 2
        return first, last

    @model_validator(mode="after")
    def _bands_fit_the_spectrum(self) -> BandRmsRule:
        nyquist = self.sample_rate_hz / 2
        df = self.resolution_hz
        seen: set[str] = set()
        for i, band in enumerate(self.bands):
            # "at .bands[i].key: ..." lets the loader point at the band's own line.
            if band.name in seen:
                raise ValueError(f"at .bands[{i}].name: band name {band.name!r} is used twice")
            seen.add(band.name)
            if band.high_hz > nyquist * (1 + 1e-9):
                raise ValueError(
                    f"at .bands[{i}].high_hz: band {band.name!r} reaches {band.high_hz:g} Hz, "
                    f"above the Nyquist frequency {nyquist:g} Hz (half of sample_rate_hz)")
            if band.high_hz - band.low_hz < df * (1 - 1e-9):
                raise ValueError(
                    f"at .bands[{i}]: band {band.name!r} ({band.low_hz:g}-{band.high_hz:g} Hz) "
                    f"is narrower than one bin: the resolution is {df:g} Hz (sample_rate_hz "
                    f"{self.sample_rate_hz:g} / fft_samples {self.fft_samples}); widen the "
                    "band or raise fft_samples")
        return self


DetectorRule = Annotated[
    LimitsRule | ZScoreRule | NoveltyRule | DriftRule | StuckRule | PcaRule | MsetRule
    | RmsRule | BandRmsRule,
    Field(discriminator="kind"),
]


LEARNING_KINDS = ("zscore", "novelty", "drift", "rms", "pca", "mset", "band_rms")
"""The kinds whose rules learn what normal is from the samples (a baseline, a model, a band's
level): what they learned is kept across restarts, and `edge-agent relearn` makes them learn
it again."""


def halflife_alpha(halflife_samples: float) -> float:
    """EWMA weight of a new sample for a half-life in samples (0: no smoothing, weight 1)."""
    return 1.0 if halflife_samples <= 0 else 1.0 - math.pow(0.5, 1.0 / halflife_samples)


def rule_names(rules: list[DetectorRule]) -> list[str]:
    """Each rule's effective name: its own, or `<kind>-<n>` counting the device's rules."""
    count: dict[str, int] = {}
    names = []
    for rule in rules:
        count[rule.device] = count.get(rule.device, 0) + 1
        names.append(rule.name or f"{rule.kind}-{count[rule.device]}")
    return names
