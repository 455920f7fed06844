"""A device's detector chain, built from its configuration, its machines and its rules."""

from __future__ import annotations

from agent.clock import BOOT_ID
from agent.config.models import AgentConfig, DeviceConfig
from agent.detect.base import Detector, DetectorChain
from agent.detect.change import ChangeReporter
from agent.detect.kernels.counter import COUNTER_FIELDS
from agent.detect.kernels.window import WINDOW_FIELDS
from agent.detect.learned_state import KeepLearned, state_path
from agent.detect.machine import MachineDetector, MachineSetup
from agent.detect.open_windows import OpenWindows
from agent.detect.quality import QualityChanges
from agent.detect.raw import RawSamples
from agent.detect.rules import rule_detectors
from agent.detect.state_file import StateFile
from agent.detect.valid_range import RangeScreenedChain
from agent.detect.window import WindowAggregator
from agent.detect.window_keep import WindowKeep, keep_path
from drivers.sharing import effective_share

MACHINE_MAX_GAP_POLLS = 5
"""Default `max_gap_s` of a machine: this many poll intervals of its device."""


def make_detector(agent: AgentConfig, config: DeviceConfig, *,
                  keep_windows: bool = False, open_windows: OpenWindows | None = None,
                  ) -> Detector:
    """Every detector a device's configuration, its machines and its `detectors:` rules ask
    for, as one. `keep_windows` (the running agent): the open window is kept in RAM and
    resumed after a kill (agent/detect/window_keep.py); `open_windows`: and listed on disk,
    for the start after a power cut (agent/detect/open_windows.py)."""
    window_s = agent.aggregate.window_s
    tags = [tag.name for tag in config.tags]
    units = {tag.name: tag.unit for tag in config.tags}
    counters = {tag.name: tag.counter_modulus for tag in config.tags if tag.counter}
    state_dir = agent.gateway.state_dir
    keep = None
    if keep_windows:
        shapes = ((len(tags), WINDOW_FIELDS), (len(tags), COUNTER_FIELDS))
        keep = WindowKeep(keep_path(state_dir, config.name), BOOT_ID, tuple(tags), shapes)
    detectors: list[Detector] = [WindowAggregator(
        config.name, tags, units, window_s, counters,
        StateFile(state_dir / "counters" / f"{config.name}.json"), keep, open_windows),
        QualityChanges(config.name, tags)]
    raw = [tag.name for tag in config.tags if effective_share(config, tag.share) == "raw"]
    if raw:
        detectors.append(RawSamples(config.name, raw, window_s))
    # Text values are always reported on change; numbers when the tag asks for it.
    watched = {tag.name: tag.change_deadband for tag in config.tags
               if tag.change_deadband is not None}
    detectors.append(ChangeReporter(config.name, watched, units))
    machines = agent.machines_of(config.name)
    states: MachineDetector | None = None
    if machines:
        setups = [
            MachineSetup(
                config=m,
                max_gap_s=m.max_gap_s or MACHINE_MAX_GAP_POLLS * config.poll_interval_s,
                meter_modulus=counters.get(m.energy_counter_tag or ""),
                cycle_modulus=counters.get(m.cycle_counter_tag or ""),
            )
            for m in machines
        ]
        store = StateFile(state_dir / "machines" / f"{config.name}.json")
        states = MachineDetector(config.name, setups, store)
        detectors.append(states)  # before the rules: their gates read the state it found
    rules = agent.rules_of(config.name)
    if rules:
        sole = agent.sole_machine_of(config.name)
        detectors.append(KeepLearned(
            config.name, [name for name, _ in rules],
            lambda: rule_detectors(config.name, rules, states, sole),
            StateFile(state_path(state_dir, config.name))))
    ranges = {tag.name: tag.valid_range for tag in config.tags if tag.valid_range is not None}
    if ranges:
        return RangeScreenedChain(config.name, detectors, ranges)
    return DetectorChain(detectors)


def learned_of(detector: Detector) -> KeepLearned | None:
    """What a device's rule detectors learned, in a detector `make_detector` made (None:
    the device has no rules): `edge-agent relearn` and `status` reach it there."""
    members = detector.members if isinstance(detector, DetectorChain) else (detector,)
    return next((d for d in members if isinstance(d, KeepLearned)), None)
