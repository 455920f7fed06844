"""From device configuration to the driver that reads it: the only place that knows both."""

from __future__ import annotations

from agent.config.models import DeviceConfig
from drivers.base import Driver
from drivers.modbus import ModbusTcpDriver


def make_driver(config: DeviceConfig) -> Driver:
    # One branch per protocol; `config` is a discriminated union on `protocol`.
    return ModbusTcpDriver(config)


def tag_units(config: DeviceConfig) -> dict[str, str]:
    return {tag.name: tag.unit for tag in config.tags}
