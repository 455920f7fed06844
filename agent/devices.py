"""From device configuration to its driver and detectors: the only place that knows all three."""

from __future__ import annotations

from agent.config.models import AgentConfig, DeviceConfig
from agent.detect import Detector, DetectorChain, RawSamples, WindowAggregator
from agent.detect.change import ChangeReporter
from agent.rule_detectors import rule_detectors
from agent.sharing import effective_share
from drivers.base import Driver
from drivers.modbus import ModbusDriver


def make_driver(config: DeviceConfig) -> Driver:
    # One branch per protocol; `config` is a discriminated union on `protocol`.
    return ModbusDriver(config)


def make_detector(agent: AgentConfig, config: DeviceConfig) -> Detector:
    """Every detector a device's configuration and its `detectors:` rules ask for, as one."""
    window_s = agent.aggregate.window_s
    tags = [tag.name for tag in config.tags]
    units = {tag.name: tag.unit for tag in config.tags}
    detectors: list[Detector] = [WindowAggregator(config.name, tags, units, window_s)]
    raw = [tag.name for tag in config.tags if effective_share(config, tag.share) == "raw"]
    if raw:
        detectors.append(RawSamples(config.name, raw, window_s))
    # Text values are always reported on change; numbers when the tag asks for it.
    watched = {tag.name: tag.deadband for tag in config.tags if getattr(tag, "report_on_change", False)}
    detectors.append(ChangeReporter(config.name, watched, units))
    detectors += rule_detectors(config.name, agent.rules_of(config.name))
    return DetectorChain(detectors)
