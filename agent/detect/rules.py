"""From the `detectors:` rules of one device to its anomaly detectors: one per kind.

Rules of the same kind share one detector (and so one kernel call per batch); each tag of
a univariate rule is a row, each multivariate rule a group, each band of each tag of a
`band_rms` rule a row (its tag's samples feed one ring shared by the tag's bands).
Parameters become the kernels' units here: nanoseconds, EWMA weights, +-inf for an absent
limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from agent.config.detection import (
    BandRmsRule,
    DetectorRule,
    DriftRule,
    Gate,
    LimitsRule,
    MsetRule,
    NoveltyRule,
    PcaRule,
    RmsRule,
    StuckRule,
    ZScoreRule,
    halflife_alpha,
)
from agent.detect.anomaly import MsetDetector, PcaDetector, UnivariateDetector
from agent.detect.band import BandRmsDetector
from agent.detect.base import Detector
from agent.detect.episodes import RowInfo
from agent.detect.gate import GatedDetector, MachineStates, StateGated
from agent.detect.kernels import band as kb
from agent.detect.kernels import mset as km
from agent.detect.kernels import novelty as kn
from agent.detect.kernels import pca as kp
from agent.detect.kernels import univariate as ku

NamedRule = tuple[str, DetectorRule]


def _common(rule: DetectorRule, width: int) -> list[float]:
    row = [0.0] * width
    row[ku.P_MIN_NS] = rule.min_duration_s * 1e9
    row[ku.P_CLEAR_NS] = rule.clear_duration_s * 1e9
    row[ku.P_AFTER] = float(rule.context_samples)
    return row


def _group_row(rule: PcaRule | MsetRule, width: int) -> list[float]:
    """A multivariate rule's parameters: the common ones, its tags and warm-up (the row
    layout every multivariate kernel takes from `kernels.pca`)."""
    row = _common(rule, width)
    row[kp.X_DIM] = len(rule.tags)
    row[kp.X_WARMUP] = rule.warmup_samples
    return row


def _or(value: float | None, absent: float) -> float:
    return absent if value is None else value


def _limits(device: str, rules: Sequence[tuple[str, LimitsRule]]) -> Detector:
    infos, params = [], []
    for name, rule in rules:
        for tag in rule.tags:
            row = _common(rule, ku.LIMIT_PARAMS)
            row[ku.L_LOW], row[ku.L_HIGH] = _or(rule.low, -math.inf), _or(rule.high, math.inf)
            row[ku.L_HYST] = rule.hysteresis
            if rule.low is not None or rule.high is not None:
                infos.append(RowInfo(name, "limits", (tag,), bound="level", low=rule.low,
                                     high=rule.high, max_rate_per_s=rule.max_rate_per_s))
                params.append([*row[:ku.L_MODE], ku.L_LEVEL, 0.0])
            if rule.max_rate_per_s is not None:
                infos.append(RowInfo(name, "limits", (tag,), bound="rate", part="rate",
                                     low=rule.low, high=rule.high,
                                     max_rate_per_s=rule.max_rate_per_s))
                params.append([*row[:ku.L_MODE], ku.L_RATE, rule.max_rate_per_s])
    return UnivariateDetector(device, infos, np.array(params), ku.LIMIT_STATE, ku.limits_batch)


def _zscore(device: str, rules: Sequence[tuple[str, ZScoreRule]]) -> Detector:
    infos, params = [], []
    for name, rule in rules:
        row = _common(rule, ku.ZSCORE_PARAMS)
        row[ku.Z_THRESHOLD] = rule.threshold_z
        row[ku.Z_CLEAR] = _or(rule.clear_z, rule.threshold_z / 2)
        row[ku.Z_ALPHA_SMOOTH] = halflife_alpha(rule.smoothing_halflife_samples)
        row[ku.Z_ALPHA_BASE] = halflife_alpha(rule.baseline_halflife_samples)
        row[ku.Z_WARMUP] = rule.warmup_samples
        row[ku.Z_DIRECTION] = {"both": 0.0, "high": 1.0, "low": -1.0}[rule.direction]
        for tag in rule.tags:
            infos.append(RowInfo(name, "zscore", (tag,)))
            params.append(row)
    return UnivariateDetector(device, infos, np.array(params), ku.ZSCORE_STATE, ku.zscore_batch,
                              learns=ku.Z_WARMUP)


def _novelty(device: str, rules: Sequence[tuple[str, NoveltyRule]]) -> Detector:
    infos, params = [], []
    for name, rule in rules:
        row = _common(rule, kn.NOVELTY_PARAMS)
        row[kn.N_WARMUP] = rule.warmup_samples
        row[kn.N_THRESHOLD] = rule.threshold_z
        row[kn.N_LEVEL_Z] = rule.level_z
        row[kn.N_HOLD] = rule.hold_samples
        for tag in rule.tags:
            infos.append(RowInfo(name, "novelty", (tag,)))
            params.append(row)
    longest = max(rule.warmup_samples for _, rule in rules)
    return UnivariateDetector(device, infos, np.array(params), kn.novelty_state_fields(longest),
                              kn.novelty_batch, learns=kn.N_WARMUP)


def _drift(device: str, rules: Sequence[tuple[str, DriftRule]]) -> Detector:
    infos, params = [], []
    for name, rule in rules:
        row = _common(rule, ku.DRIFT_PARAMS)
        row[ku.D_WARMUP] = rule.warmup_samples
        row[ku.D_SLACK] = rule.slack_sigma
        row[ku.D_THRESHOLD] = rule.threshold_sigma
        row[ku.D_CLEAR] = _or(rule.clear_sigma, rule.threshold_sigma / 2)
        for tag in rule.tags:
            infos.append(RowInfo(name, "drift", (tag,)))
            params.append(row)
    return UnivariateDetector(device, infos, np.array(params), ku.DRIFT_STATE, ku.drift_batch,
                              learns=ku.D_WARMUP)


def _stuck(device: str, rules: Sequence[tuple[str, StuckRule]]) -> Detector:
    infos, params = [], []
    for name, rule in rules:
        for tag in rule.tags:
            row = _common(rule, ku.STUCK_PARAMS)
            row[ku.S_MIN_CHANGE] = rule.min_change
            if rule.stuck_after_s is not None:
                infos.append(RowInfo(name, "stuck", (tag,)))
                params.append([*row[:ku.S_MODE], ku.S_FLAT, rule.stuck_after_s * 1e9,
                               rule.min_change])
            if rule.silent_after_s is not None:
                infos.append(RowInfo(name, "stuck", (tag,), part="silent"))
                params.append([*row[:ku.S_MODE], ku.S_SILENT, rule.silent_after_s * 1e9,
                               rule.min_change])
    return UnivariateDetector(device, infos, np.array(params), ku.STUCK_STATE, ku.stuck_batch,
                              tick_kernel=ku.stuck_tick)


def _rms(device: str, rules: Sequence[tuple[str, RmsRule]]) -> Detector:
    infos, params = [], []
    for name, rule in rules:
        row = _common(rule, ku.RMS_PARAMS)
        row[ku.R_ALPHA] = 1.0 / rule.window_samples
        row[ku.R_REMOVE_MEAN] = 1.0 if rule.remove_mean else 0.0
        row[ku.R_MAX_RMS] = _or(rule.max_rms, math.inf)
        row[ku.R_MAX_RATIO] = _or(rule.max_ratio, math.inf)
        row[ku.R_WARMUP] = rule.warmup_samples
        row[ku.R_CLEAR_FRACTION] = rule.clear_fraction
        row[ku.R_MIN_LIMIT] = _or(rule.min_limit_rms, 0.0)
        for tag in rule.tags:
            infos.append(RowInfo(name, "rms", (tag,)))
            params.append(row)
    return UnivariateDetector(device, infos, np.array(params), ku.RMS_STATE, ku.rms_batch,
                              learns=ku.R_WARMUP)


def _band_rms(device: str, rules: Sequence[tuple[str, BandRmsRule]]) -> Detector:
    tags: list[str] = []
    signals: list[list[float]] = []
    infos: list[RowInfo] = []
    bands: list[list[float]] = []
    windows = []
    for t, (name, rule) in enumerate(rules):
        n = rule.fft_samples
        window = kb.window(rule.window, n)
        windows.append(window)
        for tag in rule.tags:
            signal = [0.0] * kb.SIGNAL_PARAMS
            signal[kb.G_N] = n
            signal[kb.G_HOP] = n if rule.overlap == 0 else n // 2
            signal[kb.G_TABLE] = t
            signal[kb.G_FIRST_BAND] = len(infos)
            signal[kb.G_BANDS] = len(rule.bands)
            signal[kb.G_CONTINUOUS] = 1.0 if rule.continuous else 0.0
            signal[kb.G_NORM] = 1.0 / (n * float(np.sum(window * window)))
            tags.append(tag)
            signals.append(signal)
            for band in rule.bands:
                row = _common(rule, kb.BAND_PARAMS)
                row[kb.B_FIRST_BIN], row[kb.B_LAST_BIN] = rule.bins(band)
                row[kb.B_MAX_RMS] = _or(band.max_rms, math.inf)
                row[kb.B_MAX_RATIO] = _or(band.max_ratio, math.inf)
                row[kb.B_WARMUP] = rule.warmup_blocks
                row[kb.B_ALPHA] = 1.0 / rule.average_blocks
                row[kb.B_CLEAR_FRACTION] = rule.clear_fraction
                row[kb.B_MIN_LIMIT] = _or(band.min_limit_rms, 0.0)
                infos.append(RowInfo(name, "band_rms", (tag,), part=band.name,
                                     band_hz=(band.low_hz, band.high_hz)))
                bands.append(row)
    return BandRmsDetector(device, tags, np.array(signals), infos, np.array(bands), windows)


def _pca(device: str, rules: Sequence[tuple[str, PcaRule]]) -> Detector:
    infos, params = [], []
    for name, rule in rules:
        row = _group_row(rule, kp.PCA_PARAMS)
        row[kp.X_VARIANCE] = rule.explained_variance
        row[kp.X_ALPHA] = halflife_alpha(rule.smoothing_halflife_samples)
        row[kp.X_INPUT_ALPHA] = halflife_alpha(rule.input_smoothing_halflife_samples)
        row[kp.X_FACTOR] = rule.threshold_factor
        row[kp.X_CLEAR] = rule.clear_ratio
        if rule.confidence is not None:
            row[kp.X_CONFIDENCE_Z] = NormalDist().inv_cdf(rule.confidence)
        infos.append(RowInfo(name, "pca", tuple(rule.tags)))
        params.append(row)
    return PcaDetector(device, infos, np.array(params))


def _mset(device: str, rules: Sequence[tuple[str, MsetRule]]) -> Detector:
    infos, params = [], []
    for name, rule in rules:
        row = _group_row(rule, km.MSET_PARAMS)
        row[km.X_MEMORY] = rule.memory_vectors
        row[km.X_WIDTH] = rule.bandwidth
        row[km.X_SHIFT] = rule.shift_sigma
        alpha, beta = rule.false_alarm, rule.missed_alarm
        row[km.X_UPPER] = math.log((1.0 - beta) / alpha)
        row[km.X_LOWER] = math.log(beta / (1.0 - alpha))
        infos.append(RowInfo(name, "mset", tuple(rule.tags)))
        params.append(row)
    return MsetDetector(device, infos, np.array(params))


_BUILDERS: dict[str, Callable[[str, Any], Detector]] = {"limits": _limits, "zscore": _zscore,
             "novelty": _novelty, "drift": _drift, "stuck": _stuck,
             "rms": _rms, "pca": _pca, "mset": _mset, "band_rms": _band_rms}


def rule_detectors(device: str, rules: Sequence[NamedRule], machines: MachineStates | None = None,
                   sole_machine: str | None = None) -> list[Detector]:
    """One detector per kind of rule the device has, in a fixed order; rules with `while_states`
    after the others, one detector per kind and gate (`agent/detect/gate.py`). `machines`: the
    machines' states; `sole_machine`: the device's one machine, for rules naming none."""
    detectors = []
    gates: dict[Gate | None, list[NamedRule]] = {}
    for name, rule in rules:
        gates.setdefault(rule.gate(sole_machine), []).append((name, rule))
    for gate, own in sorted(gates.items(), key=lambda item: item[0] is not None):
        for kind, build in _BUILDERS.items():
            of_kind = [(name, rule) for name, rule in own if rule.kind == kind]
            if not of_kind:
                continue
            detector = build(device, of_kind)
            if gate is not None:
                if machines is None:
                    raise ValueError(f"rules of device {device!r} run while {gate.describe()}, "
                                     "and no machine state is known to the detectors")
                assert isinstance(detector, GatedDetector)
                detector = StateGated(detector, gate, machines,
                                      tuple(name for name, _ in of_kind))
            detectors.append(detector)
    return detectors
