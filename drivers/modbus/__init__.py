"""Modbus devices: configuration, profiles, request planning, decoding, lines and the driver."""

from drivers.modbus.config import (
    ModbusDevice,
    ModbusRtuDevice,
    ModbusRtuTcpDevice,
    ModbusTag,
    ModbusTcpDevice,
)
from drivers.modbus.driver import ModbusDriver

__all__ = [
    "ModbusDevice",
    "ModbusDriver",
    "ModbusRtuDevice",
    "ModbusRtuTcpDevice",
    "ModbusTag",
    "ModbusTcpDevice",
]
