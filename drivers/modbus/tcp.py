"""Modbus TCP driver: reads a device's plans with pymodbus, decodes, reports faults.

The agent is read-only towards the PLC: only function codes 3 and 4 leave it.
pymodbus's own reconnect is switched off (reconnect_delay=0) because the
runtime's supervisor owns reconnects and backoff for every protocol alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from drivers.base import ReadPlan
from drivers.errors import (
    DeviceError,
    DeviceException,
    DeviceTimeout,
    DeviceUnreachable,
    IllegalAddress,
    ProtocolError,
)
from drivers.modbus.codec import decode
from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.plan import ModbusReadPlan, Request, plan_requests
from drivers.samples import Quality, SampleBatch

_ILLEGAL_DATA_ADDRESS = 2


class ModbusTcpDriver:
    """One Modbus TCP device (satisfies drivers.base.Driver)."""

    def __init__(self, config: ModbusTcpDevice) -> None:
        self._config = config
        self._plans = (
            ModbusReadPlan(
                name="default",
                interval_s=config.poll_interval_s,
                requests=plan_requests(
                    config.tags, max_gap_registers=config.max_gap_registers
                ),
            ),
        )
        self._client: AsyncModbusTcpClient | None = None

    @property
    def device(self) -> str:
        return self._config.name

    @property
    def plans(self) -> Sequence[ModbusReadPlan]:
        return self._plans

    async def connect(self) -> None:
        cfg = self._config
        client = AsyncModbusTcpClient(
            cfg.host,
            port=cfg.port,
            timeout=cfg.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=cfg.name,
        )
        try:
            connected = await client.connect()
        except OSError as exc:  # DNS failures surface here
            raise DeviceUnreachable(cfg.name, f"{cfg.host}:{cfg.port}: {exc}") from exc
        if not connected:
            client.close()
            raise DeviceUnreachable(cfg.name, f"cannot connect to {cfg.host}:{cfg.port}")
        self._client = client

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, plan: ReadPlan) -> SampleBatch:
        if not isinstance(plan, ModbusReadPlan):
            raise TypeError(f"{self.device}: not a Modbus plan: {plan!r}")
        time_ns = time.time_ns()
        mono_ns = time.monotonic_ns()
        values: list[float] = []
        quality: list[int] = []
        for request in plan.requests:
            words = await self._read_request(request)
            for tag in request.tags:
                offset = tag.address - request.address
                raw = decode(
                    words[offset : offset + tag.register_count],
                    tag.type,
                    tag.byte_order or self._config.byte_order,
                )
                value = raw * tag.scale + tag.offset
                # A NaN or infinity from a float register is a garbage reading, not a value.
                quality.append(Quality.GOOD if math.isfinite(value) else Quality.BAD)
                values.append(value)
        return SampleBatch(
            device=self.device,
            tags=plan.tags,
            values=np.asarray(values, dtype=np.float64),
            quality=np.asarray(quality, dtype=np.uint8),
            time_ns=time_ns,
            mono_ns=mono_ns,
        )

    async def _read_request(self, request: Request) -> list[int]:
        client = self._client
        name = self._config.name
        address = f"{request.table}:{request.address}+{request.count}"
        if client is None or not client.connected:
            raise DeviceUnreachable(name, "not connected", address=address)
        read = (
            client.read_holding_registers
            if request.table == "holding"
            else client.read_input_registers
        )
        try:
            response = await read(request.address, count=request.count, device_id=self._config.unit)
        except ConnectionException as exc:
            raise DeviceUnreachable(name, str(exc), address=address) from exc
        except TimeoutError as exc:
            raise DeviceTimeout(name, f"no answer within {self._config.timeout_s} s", address=address) from exc
        except ModbusIOException as exc:
            raise _classify_io_error(name, exc, address, self._config.timeout_s) from exc
        if isinstance(response, ExceptionResponse) or response.isError():
            code = int(getattr(response, "exception_code", 0))
            cls: type[DeviceException] = (
                IllegalAddress if code == _ILLEGAL_DATA_ADDRESS else DeviceException
            )
            raise cls(name, f"exception code {code}", code=code, address=address)
        words = list(response.registers)
        if len(words) != request.count:
            raise ProtocolError(
                name, f"asked for {request.count} registers, got {len(words)}", address=address
            )
        return words


def _classify_io_error(
    device: str, exc: ModbusIOException, address: str, timeout_s: float
) -> DeviceError:
    """pymodbus reports both silence and mismatched answers as ModbusIOException."""
    if "No response" in str(exc):
        return DeviceTimeout(device, f"no answer within {timeout_s} s", address=address)
    return ProtocolError(device, str(exc), address=address)
