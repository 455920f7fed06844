"""From device configuration to its driver and detectors: the only place that knows all three."""

from __future__ import annotations

from pathlib import Path

from agent.config.models import DeviceConfig
from agent.detect import Detector, DetectorChain, QualityChanges, RawSamples, WindowAggregator
from agent.detect.change import ChangeReporter
from agent.sharing import effective_share
from drivers.base import Driver
from drivers.modbus import ModbusDriver
from drivers.opcua import OpcUaDevice, OpcUaDriver


def make_driver(config: DeviceConfig, state_dir: Path) -> Driver:
    # One branch per protocol; `config` is a discriminated union on `protocol`.
    if isinstance(config, OpcUaDevice):
        return OpcUaDriver(config, state_dir)  # its certificates live in the state directory
    return ModbusDriver(config)


def make_detector(config: DeviceConfig, window_s: float) -> Detector:
    """Every detector a device's configuration asks for, as one."""
    tags = [tag.name for tag in config.tags]
    units = {tag.name: tag.unit for tag in config.tags}
    detectors: list[Detector] = [WindowAggregator(config.name, tags, units, window_s),
                                 QualityChanges(config.name, tags)]
    raw = [tag.name for tag in config.tags if effective_share(config, tag.share) == "raw"]
    if raw:
        detectors.append(RawSamples(config.name, raw, window_s))
    # Text values are always reported on change; numbers when the tag asks for it.
    watched = {} if isinstance(config, OpcUaDevice) else {
        tag.name: tag.deadband for tag in config.tags if getattr(tag, "report_on_change", False)}
    detectors.append(ChangeReporter(config.name, watched, units))
    return DetectorChain(detectors)
