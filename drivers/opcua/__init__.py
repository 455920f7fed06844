"""OPC UA devices: configuration, value conversion, certificates, and the asyncua driver.

The driver is imported when first asked for: asyncua costs about 20 MiB and half a second,
which a gateway with Modbus devices only, and every command that just reads a
configuration, need not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drivers.opcua.config import OpcUaDevice, OpcUaTag

if TYPE_CHECKING:
    from drivers.opcua.client import OpcUaDriver

__all__ = ["OpcUaDevice", "OpcUaDriver", "OpcUaTag"]


def __getattr__(name: str) -> Any:
    if name == "OpcUaDriver":
        from drivers.opcua.client import OpcUaDriver

        return OpcUaDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
