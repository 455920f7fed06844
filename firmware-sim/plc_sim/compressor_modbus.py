"""The compressor's Modbus register map, and the values it serves.

The map is a contract: the agent's device configuration reads these exact
addresses, types and word orders. Change it only together with that config
and with `firmware-sim/README.md`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from plc_sim.compressor import Compressor, CompressorState
from plc_sim.modbus_server import Arrays, RawValues, ServedMachine, TraceRecord
from plc_sim.registers import RegisterSpec, float32, saturate
from plc_sim.vibration import LiveWaveform

FIRMWARE_VERSION = 0x0102
"""Served at holding 102: major in the high byte, minor in the low byte (1.2)."""

PRESSURE_SCALE = 0.01
TEMPERATURE_SCALE = 0.1
VIBRATION_SCALE = 0.01
FLOW_SCALE = 0.001

REGISTER_MAP: tuple[RegisterSpec, ...] = (
    RegisterSpec("motor_current", "input", 0, "float32", "ABCD", "A"),
    RegisterSpec("active_power", "input", 2, "float32", "ABCD", "W"),
    RegisterSpec("energy_counter", "input", 4, "uint32", "ABCD", "Wh"),
    RegisterSpec("discharge_pressure", "input", 6, "int16", unit="bar", scale=PRESSURE_SCALE),
    RegisterSpec("discharge_temperature", "input", 7, "int16", unit="°C", scale=TEMPERATURE_SCALE),
    RegisterSpec("machine_state", "input", 8, "uint16"),
    RegisterSpec("vibration_rms", "input", 9, "uint16", unit="mm/s", scale=VIBRATION_SCALE),
    RegisterSpec("air_flow", "input", 10, "uint16", unit="m³/min", scale=FLOW_SCALE),
    RegisterSpec("operating_seconds", "holding", 100, "uint32", "CDAB", "s"),
    RegisterSpec("firmware_version", "holding", 102, "uint16"),
    RegisterSpec("load_cycles", "holding", 103, "uint16"),
)

_U32_WRAP = 1 << 32
_U16_WRAP = 1 << 16


def raw_values(state: CompressorState) -> dict[str, float]:
    """The number behind each register, before encoding into words.

    Rounding happens here, once, so the registers and the trace cannot
    disagree: floats are rounded to float32, scaled integers to their LSB, and
    the 32-bit counters wrap like the real meter's would.
    """
    return {
        "motor_current": float32(state.motor_current_a),
        "active_power": float32(state.active_power_w),
        "energy_counter": int(state.energy_wh) % _U32_WRAP,
        "discharge_pressure": saturate(round(state.pressure_reading_bar / PRESSURE_SCALE), "int16"),
        "discharge_temperature": saturate(round(state.temperature_c / TEMPERATURE_SCALE), "int16"),
        "machine_state": int(state.machine_state),
        "operating_seconds": state.operating_s % _U32_WRAP,
        "firmware_version": FIRMWARE_VERSION,
        "vibration_rms": saturate(round(state.vibration_mm_s / VIBRATION_SCALE), "uint16"),
        "air_flow": saturate(round(state.air_flow_m3_min / FLOW_SCALE), "uint16"),
        "load_cycles": state.load_cycles % _U16_WRAP,
    }


@dataclass(frozen=True, slots=True)
class CompressorReadings:
    """Engineering values exactly as a client decodes them from the registers.

    Scaled integers are `raw * scale` (the computation the agent's
    `value = raw * scale + offset` does), not `raw / (1 / scale)`, so the
    floats compare equal, not merely close.
    """

    motor_current_a: float
    active_power_w: float
    energy_wh: int
    discharge_pressure_bar: float
    discharge_temp_c: float
    state: int
    operating_s: int
    vibration_mm_s: float
    air_flow_m3_min: float
    load_cycles: int


def served_readings(state: CompressorState) -> CompressorReadings:
    """What a client reading the registers now would decode."""
    raw = raw_values(state)
    return CompressorReadings(
        motor_current_a=float(raw["motor_current"]),
        active_power_w=float(raw["active_power"]),
        energy_wh=int(raw["energy_counter"]),
        discharge_pressure_bar=int(raw["discharge_pressure"]) * PRESSURE_SCALE,
        discharge_temp_c=int(raw["discharge_temperature"]) * TEMPERATURE_SCALE,
        state=int(raw["machine_state"]),
        operating_s=int(raw["operating_seconds"]),
        vibration_mm_s=int(raw["vibration_rms"]) * VIBRATION_SCALE,
        air_flow_m3_min=int(raw["air_flow"]) * FLOW_SCALE,
        load_cycles=int(raw["load_cycles"]),
    )


def trace_record(state: CompressorState) -> TraceRecord:
    """One `--trace` line: wall-clock time (UTC ns), the served readings and the ground truth
    (`fault`: the active fault or None, `fault_severity` 0..1)."""
    return {"time_ns": time.time_ns(), **asdict(served_readings(state)),
            "fault": state.fault, "fault_severity": round(state.fault_severity, 4)}


WAVEFORM = "vibration_waveform_mm_s"
"""The array reading of the vibration capture (`plc_sim.vibration`), served over OPC UA."""


def served_compressor(compressor: Compressor, scenario: str = "compressor") -> ServedMachine:
    """Serve `compressor` with the contract register map (and its vibration waveform)."""
    waveform = LiveWaveform(compressor)

    def advance(dt_s: float) -> None:
        compressor.advance(dt_s)

    def current_raw() -> RawValues:
        return raw_values(compressor.state)

    def current_trace() -> TraceRecord:
        return trace_record(compressor.state)

    def current_arrays() -> Arrays:
        return {WAVEFORM: waveform().tolist()}

    return ServedMachine(
        scenario=scenario,
        register_map=REGISTER_MAP,
        advance=advance,
        raw_values=current_raw,
        trace_record=current_trace,
        arrays=current_arrays,
    )
