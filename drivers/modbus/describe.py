"""A Modbus device's configuration in words: the line, each poll group's requests and its tags.

What `edge-agent check` and `edge-agent plan` print, so that a technician can compare
it with the datasheet: every tag says how its address was read (`register 40101 =
holding 100`), every request its function code and registers.
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.modbus.config import ModbusDevice
from drivers.modbus.line import describe_line
from drivers.modbus.plan import ModbusReadPlan, plan_device
from drivers.valid_range import describe_range


def describe_device(device: ModbusDevice, plans: Sequence[ModbusReadPlan] | None = None) -> list[str]:
    """The device's line, then each poll group's requests and tags (`plans`: the device's, when
    the caller already has them)."""
    plans = plan_device(device) if plans is None else plans
    total = sum(len(plan.requests) for plan in plans)
    profile = f", profile {device.profile}" if device.profile else ""
    head = (f"device {device.name}: {device.protocol} {describe_line(device)} unit {device.unit}"
            f"{profile}, {len(device.tags)} tags, {total} request(s) in {len(plans)} poll group(s)")
    lines = [head]
    for plan in plans:
        lines.extend(describe_plan(plan))
    return lines


def describe_plan(plan: ModbusReadPlan) -> list[str]:
    lines = [f"  poll group {plan.name} every {plan.interval_s:g} s: {len(plan.requests)} request(s)"]
    for request in plan.requests:
        unit = "bits" if request.table in ("coil", "discrete") else "registers"
        last = request.address + request.count - 1
        lines.append(
            f"    FC{request.function_code} read {request.table} {unit} "
            f"{request.address}..{last} ({request.count})"
        )
        for tag in request.tags:
            kind = tag.type if tag.type != "string" else f"string[{tag.length_registers}]"
            unit_text = f" {tag.unit}" if tag.unit else ""
            lines.append(f"      {tag.name}: {kind}{unit_text}, {tag.describe_address()}"
                         f"{describe_range(tag.valid_range, tag.unit)}")
    return lines
