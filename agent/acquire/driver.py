"""A device's driver, chosen by the `protocol` of its configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config.models import DeviceConfig
from drivers.base import Driver


def _modbus(config: Any, state_dir: Path) -> Driver:
    from drivers.modbus import ModbusDriver

    return ModbusDriver(config)


def _opcua(config: Any, state_dir: Path) -> Driver:
    from drivers.opcua import OpcUaDriver  # asyncua only where a device speaks OPC UA

    return OpcUaDriver(config, state_dir)  # its certificates live in the state directory


_FACTORIES: dict[str, Callable[[Any, Path], Driver]] = {
    "modbus-tcp": _modbus, "modbus-rtu": _modbus, "modbus-rtu-tcp": _modbus, "opcua": _opcua}
"""One factory per `protocol` value of the DeviceConfig union; each imports its driver."""


def make_driver(config: DeviceConfig, state_dir: Path) -> Driver:
    """The driver for `config`; `state_dir` holds what a driver keeps (OPC UA certificates)."""
    return _FACTORIES[config.protocol](config, state_dir)
