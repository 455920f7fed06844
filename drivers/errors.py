"""Errors a driver raises, each naming the device (and address) it is about.

The runtime's supervisor turns them into device-health events; nothing below it
swallows them. `reason` is a short stable token for logs and health events.
"""

from __future__ import annotations


class DeviceError(Exception):
    """A device could not be read; the supervisor reports it and retries with backoff."""

    reason = "device_error"

    def __init__(self, device: str, detail: str, *, address: str | None = None) -> None:
        self.device = device
        self.detail = detail
        self.address = address
        where = f" at {address}" if address else ""
        super().__init__(f"{device}{where}: {detail}")


class DeviceUnreachable(DeviceError):
    """No connection: refused, reset, no route, DNS."""

    reason = "unreachable"


class DeviceTimeout(DeviceError):
    """Connected, but no answer within the configured timeout."""

    reason = "timeout"


class ProtocolError(DeviceError):
    """An answer that does not fit the request (wrong length, garbage, wrong ids)."""

    reason = "protocol_error"


class DeviceException(DeviceError):
    """The device answered with a protocol exception (e.g. Modbus code 2, illegal address)."""

    reason = "device_exception"

    def __init__(
        self, device: str, detail: str, *, code: int, address: str | None = None
    ) -> None:
        self.code = code
        super().__init__(device, detail, address=address)


class IllegalAddress(DeviceException):
    """The device says the address does not exist (Modbus exception code 2)."""

    reason = "illegal_address"


class ValueTruncated(DeviceError):
    """A tag's values are longer than the configuration keeps (an OPC UA array beyond its
    `max_array_length`): the rest is cut. Not a refusal: the tag is read, but not wholly."""

    reason = "array_truncated"


class SecurityRejected(DeviceError):
    """The secure connection cannot be made: an untrusted server certificate, no endpoint with
    the configured policy and mode, or credentials the server refuses. Retrying will not help
    until a technician acts; the detail says what to do."""

    reason = "security"


class FilePermission(DeviceError):
    """The agent may not read or write a file of its own that the device needs (its OPC UA
    certificate and the pinned server certificates under the state directory): retrying
    will not help until a technician gives the files back; the detail says how."""

    reason = "permission"
