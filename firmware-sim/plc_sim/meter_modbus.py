"""The register maps of three real energy meters, served from the meter model.

Each map is transcribed from the manufacturer's public Modbus document (named
in `METER_KINDS[...].source`) and kept to the registers a retrofit reads:
voltages, currents, powers, power factors, frequency, energies. The agent's
profiles in `config/profiles/` describe the same registers (each lists, in its
header, the public register maps it was checked against); a unit test holds
the two together, and the integration tests read every tag through the agent.

Encodings are done with the simulator's own encoder (`plc_sim.registers`),
not the agent's codec, so each is a check on the other. Addresses here are
zero-based (on the wire); datasheets count from 1 (`datasheet_register`).

Reserved addresses between two mapped registers answer zeros (`fill_gaps`), as
the real meters let a client read a whole block; outside the map: exception 2.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from plc_sim.meters import Meter, MeterState
from plc_sim.modbus_server import RawValues, ServedMachine, TraceRecord
from plc_sim.registers import RegisterSpec, Table, ValueType, WordOrder, float32, saturate

Reading = Callable[[MeterState], float]


@dataclass(frozen=True, slots=True)
class MeterRegister:
    """One tag of a meter: where it lives, how it is encoded, and what it measures."""

    name: str
    table: Table
    address: int
    type: ValueType
    reading: Reading
    word_order: WordOrder = "ABCD"
    scale: float = 1.0
    unit: str = ""
    counter: bool = False

    @property
    def spec(self) -> RegisterSpec:
        return RegisterSpec(
            self.name, self.table, self.address, self.type, self.word_order, self.unit, self.scale
        )


@dataclass(frozen=True, slots=True)
class MeterKind:
    profile: str
    """The name of its profile in config/profiles/ (`profile: NAME` in a device)."""
    description: str
    source: str
    registers: tuple[MeterRegister, ...]


def datasheet_register(register: MeterRegister) -> int:
    """The 1-based datasheet number: input address 0 is 30001, holding address 0 is 40001."""
    base = 30001 if register.table == "input" else 40001
    return base + register.address


def _phase(attribute: str, index: int, factor: float = 1.0) -> Reading:
    def read(state: MeterState) -> float:
        values: tuple[float, float, float] = getattr(state, attribute)
        return values[index] * factor

    return read


def _total(attribute: str, factor: float = 1.0) -> Reading:
    def read(state: MeterState) -> float:
        value: float = getattr(state, attribute)
        return value * factor

    return read


def _sdm630() -> tuple[MeterRegister, ...]:
    """Eastron SDM630: input registers (function 04), float32, high word first."""

    def reg(name: str, address: int, reading: Reading, unit: str, counter: bool = False) -> (
        MeterRegister
    ):
        return MeterRegister(name, "input", address, "float32", reading, unit=unit, counter=counter)

    return (
        *(reg(f"voltage_l{k + 1}_v", 0 + 2 * k, _phase("voltage_v", k), "V") for k in range(3)),
        *(reg(f"current_l{k + 1}_a", 6 + 2 * k, _phase("current_a", k), "A") for k in range(3)),
        *(reg(f"power_l{k + 1}_w", 12 + 2 * k, _phase("active_power_w", k), "W") for k in range(3)),
        *(reg(f"power_factor_l{k + 1}", 30 + 2 * k, _phase("power_factor", k), "") for k in range(3)),
        reg("voltage_avg_ln_v", 42, _total("average_voltage_v"), "V"),
        reg("current_avg_a", 46, _total("average_current_a"), "A"),
        reg("total_power_w", 52, _total("total_active_power_w"), "W"),
        reg("total_apparent_power_va", 56, _total("total_apparent_power_va"), "VA"),
        reg("total_reactive_power_var", 60, _total("total_reactive_power_var"), "var"),
        reg("total_power_factor", 62, _total("total_power_factor"), ""),
        reg("frequency_hz", 70, _total("frequency_hz"), "Hz"),
        reg("import_energy_kwh", 72, _total("import_energy_wh", 1e-3), "kWh", True),
        reg("export_energy_kwh", 74, _total("export_energy_wh", 1e-3), "kWh", True),
        reg("import_reactive_energy_kvarh", 76, _total("import_reactive_varh", 1e-3), "kvarh", True),
        reg("export_reactive_energy_kvarh", 78, _total("export_reactive_varh", 1e-3), "kvarh", True),
        *(
            reg(f"voltage_l{k + 1}_l{(k + 1) % 3 + 1}_v", 200 + 2 * k, _phase("line_voltage_v", k), "V")
            for k in range(3)
        ),
        reg("neutral_current_a", 224, _total("neutral_current_a"), "A"),
    )


def _iem3000() -> tuple[MeterRegister, ...]:
    """Schneider iEM3000 series: holding registers (function 03), float32 and int64, ABCD.

    The datasheet numbers registers from 1 (current I1 is "3000"), so the
    address on the wire is one less.
    """

    def f32(name: str, number: int, reading: Reading, unit: str) -> MeterRegister:
        return MeterRegister(name, "holding", number - 1, "float32", reading, unit=unit)

    def i64(name: str, number: int, reading: Reading, unit: str) -> MeterRegister:
        return MeterRegister(name, "holding", number - 1, "int64", reading, unit=unit, counter=True)

    return (
        *(f32(f"current_l{k + 1}_a", 3000 + 2 * k, _phase("current_a", k), "A") for k in range(3)),
        f32("current_avg_a", 3010, _total("average_current_a"), "A"),
        *(
            f32(f"voltage_l{k + 1}_l{(k + 1) % 3 + 1}_v", 3020 + 2 * k, _phase("line_voltage_v", k), "V")
            for k in range(3)
        ),
        *(f32(f"voltage_l{k + 1}_n_v", 3028 + 2 * k, _phase("voltage_v", k), "V") for k in range(3)),
        f32("voltage_avg_ln_v", 3036, _total("average_voltage_v"), "V"),
        *(
            f32(f"power_l{k + 1}_kw", 3054 + 2 * k, _phase("active_power_w", k, 1e-3), "kW")
            for k in range(3)
        ),
        f32("total_power_kw", 3060, _total("total_active_power_w", 1e-3), "kW"),
        f32("total_reactive_power_kvar", 3068, _total("total_reactive_power_var", 1e-3), "kvar"),
        f32("total_apparent_power_kva", 3076, _total("total_apparent_power_va", 1e-3), "kVA"),
        f32("total_power_factor", 3084, _total("total_power_factor"), ""),
        f32("frequency_hz", 3110, _total("frequency_hz"), "Hz"),
        i64("import_energy_wh", 3204, _total("import_energy_wh"), "Wh"),
        i64("export_energy_wh", 3208, _total("export_energy_wh"), "Wh"),
        i64("import_reactive_energy_varh", 3220, _total("import_reactive_varh"), "varh"),
        i64("export_reactive_energy_varh", 3224, _total("export_reactive_varh"), "varh"),
    )


def _em24() -> tuple[MeterRegister, ...]:
    """Carlo Gavazzi EM24 Ethernet (E1): holding registers, INT32 low word first (CDAB) with a
    weight, INT16.

    The RS-485 EM24-DIN puts PF, Hz and the energies elsewhere; this is the E1 map only.
    """

    def i32(name: str, address: int, reading: Reading, scale: float, unit: str,
            counter: bool = False) -> MeterRegister:
        return MeterRegister(
            name, "holding", address, "int32", reading, "CDAB", scale, unit, counter
        )

    def i16(name: str, address: int, reading: Reading, scale: float, unit: str) -> MeterRegister:
        return MeterRegister(name, "holding", address, "int16", reading, scale=scale, unit=unit)

    return (
        *(i32(f"voltage_l{k + 1}_n_v", 0x00 + 2 * k, _phase("voltage_v", k), 0.1, "V")
          for k in range(3)),
        *(
            i32(f"voltage_l{k + 1}_l{(k + 1) % 3 + 1}_v", 0x06 + 2 * k,
                _phase("line_voltage_v", k), 0.1, "V")
            for k in range(3)
        ),
        *(i32(f"current_l{k + 1}_a", 0x0C + 2 * k, _phase("current_a", k), 0.001, "A")
          for k in range(3)),
        *(i32(f"power_l{k + 1}_w", 0x12 + 2 * k, _phase("active_power_w", k), 0.1, "W")
          for k in range(3)),
        i32("voltage_avg_ln_v", 0x24, _total("average_voltage_v"), 0.1, "V"),
        i32("total_power_w", 0x28, _total("total_active_power_w"), 0.1, "W"),
        i32("total_apparent_power_va", 0x2A, _total("total_apparent_power_va"), 0.1, "VA"),
        i32("total_reactive_power_var", 0x2C, _total("total_reactive_power_var"), 0.1, "var"),
        *(i16(f"power_factor_l{k + 1}", 0x2E + k, _phase("power_factor", k), 0.001, "")
          for k in range(3)),
        i16("total_power_factor", 0x31, _total("total_power_factor"), 0.001, ""),
        i16("frequency_hz", 0x33, _total("frequency_hz"), 0.1, "Hz"),
        i32("import_energy_kwh", 0x34, _total("import_energy_wh", 1e-3), 0.1, "kWh", True),
        i32("import_reactive_energy_kvarh", 0x36, _total("import_reactive_varh", 1e-3), 0.1,
            "kvarh", True),
        i32("export_energy_kwh", 0x4E, _total("export_energy_wh", 1e-3), 0.1, "kWh", True),
        i32("export_reactive_energy_kvarh", 0x50, _total("export_reactive_varh", 1e-3), 0.1,
            "kvarh", True),
    )


METER_KINDS: dict[str, MeterKind] = {
    "sdm630": MeterKind(
        "eastron-sdm630",
        "Eastron SDM630 Modbus (V2) three-phase multifunction meter",
        "Eastron SDM630-Modbus V2 User Manual V1.6B (2021), Modbus protocol section: "
        "input registers 30001..30381",
        _sdm630(),
    ),
    "iem3000": MeterKind(
        "schneider-iem3000",
        "Schneider Electric iEM3100/3200/3300 series (iEM3000) three-phase energy meter",
        "Schneider Electric iEM3100 / iEM3200 / iEM3300 series Energy meters User manual, "
        "DOCA0005EN-13 (03/2022), Modbus register list (registers 3000..3227)",
        _iem3000(),
    ),
    "em24": MeterKind(
        "carlo-gavazzi-em24",
        "Carlo Gavazzi EM24 Ethernet (EM24_E1) three-phase energy analyzer",
        "Carlo Gavazzi EM24_E1 (Ethernet) Communication Protocol, Version 0 Revision 1.2 "
        "(instantaneous variables and meters, 0000h..0051h)",
        _em24(),
    ),
}
"""Meter kinds `plc-sim --meter KIND[@UNIT]` serves, by short name."""


def raw_values(kind: MeterKind, state: MeterState) -> dict[str, float]:
    """The number behind each register: floats rounded to float32, integers to their LSB."""
    raw: dict[str, float] = {}
    for register in kind.registers:
        value = register.reading(state)
        if register.type == "float32":
            raw[register.name] = float32(value)
        else:
            raw[register.name] = saturate(round(value / register.scale), register.type)
    return raw


def served_readings(kind: MeterKind, state: MeterState) -> dict[str, float]:
    """What a client decodes from the registers now (integers times their scale)."""
    raw = raw_values(kind, state)
    return {
        register.name: (
            raw[register.name]
            if register.type == "float32"
            else int(raw[register.name]) * register.scale
        )
        for register in kind.registers
    }


def served_meter(kind_name: str, meter: Meter) -> ServedMachine:
    """Serve `meter` with the register map of `kind_name` (a key of METER_KINDS)."""
    kind = METER_KINDS[kind_name]

    def current_raw() -> RawValues:
        return raw_values(kind, meter.state)

    def current_trace() -> TraceRecord:
        return {"time_ns": time.time_ns(), **served_readings(kind, meter.state)}

    return ServedMachine(
        scenario=kind_name,
        register_map=tuple(register.spec for register in kind.registers),
        advance=meter.advance,
        raw_values=current_raw,
        trace_record=current_trace,
        fill_gaps=True,
    )
