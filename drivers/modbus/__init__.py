"""Modbus devices: configuration, request planning, decoding and the TCP driver."""

from drivers.modbus.config import ModbusTag, ModbusTcpDevice
from drivers.modbus.tcp import ModbusTcpDriver

__all__ = ["ModbusTag", "ModbusTcpDevice", "ModbusTcpDriver"]
