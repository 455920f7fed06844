"""Register encoding of the simulator and the compressor's contract map, without a server."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest

from plc_sim.compressor import Compressor, MachineState
from plc_sim.compressor_modbus import (
    FIRMWARE_VERSION,
    REGISTER_MAP,
    raw_values,
    served_readings,
)
from plc_sim.registers import RegisterSpec, contiguous_runs, encode, float32


def test_uint32_word_orders() -> None:
    value = 0x1234_5678
    high_first = RegisterSpec("x", "input", 0, "uint32", "ABCD")
    low_first = replace(high_first, word_order="CDAB")

    assert encode(high_first, value) == [0x1234, 0x5678]
    assert encode(low_first, value) == [0x5678, 0x1234]


def test_float32_is_ieee_big_endian_high_word_first() -> None:
    spec = RegisterSpec("x", "input", 0, "float32")
    words = encode(spec, 12.5)

    assert struct.unpack(">f", b"".join(w.to_bytes(2, "big") for w in words))[0] == 12.5
    assert words == [0x4148, 0x0000]


def test_int16_is_twos_complement_and_saturates() -> None:
    spec = RegisterSpec("x", "input", 0, "int16")

    assert encode(spec, -1) == [0xFFFF]
    assert encode(spec, 40_000) == [0x7FFF]
    assert encode(spec, -40_000) == [0x8000]


def test_float32_rounding_is_what_a_client_decodes() -> None:
    assert float32(0.1) != 0.1
    assert float32(0.1) == struct.unpack(">f", struct.pack(">f", 0.1))[0]


def test_overlapping_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        contiguous_runs(
            [
                RegisterSpec("a", "input", 0, "float32"),
                RegisterSpec("b", "input", 1, "uint16"),
            ]
        )


def test_contract_map_is_two_gap_free_runs() -> None:
    runs = contiguous_runs(REGISTER_MAP)

    assert [(r.table, r.address, r.count) for r in runs] == [("holding", 100, 4), ("input", 0, 11)]


def test_served_readings_match_the_raw_register_values() -> None:
    compressor = Compressor(seed=3)
    compressor.advance(42.0)
    raw = raw_values(compressor.state)
    readings = served_readings(compressor.state)

    assert readings.motor_current_a == float32(compressor.state.motor_current_a)
    assert readings.active_power_w == float32(compressor.state.active_power_w)
    assert readings.energy_wh == int(compressor.state.energy_wh)
    assert readings.discharge_pressure_bar == int(raw["discharge_pressure"]) * 0.01
    assert readings.discharge_pressure_bar == pytest.approx(
        compressor.state.pressure_bar, abs=0.005
    )
    assert readings.discharge_temp_c == pytest.approx(compressor.state.temperature_c, abs=0.05)
    assert readings.state == int(compressor.state.machine_state)
    assert readings.operating_s == compressor.state.operating_s
    assert raw["firmware_version"] == FIRMWARE_VERSION == 0x0102


def test_counters_wrap_at_32_bits_like_a_meter() -> None:
    state = replace(Compressor().state, energy_wh=2.0**32 + 5.7, motor_on_s=2.0**32 + 9.2)
    raw = raw_values(state)

    assert raw["energy_counter"] == 5
    assert raw["operating_seconds"] == 9
    assert raw["machine_state"] == MachineState.RUNNING
