"""OPC UA devices: configuration, value conversion, certificates, and the asyncua driver."""

from drivers.opcua.client import OpcUaDriver
from drivers.opcua.config import OpcUaDevice, OpcUaTag

__all__ = ["OpcUaDevice", "OpcUaDriver", "OpcUaTag"]
