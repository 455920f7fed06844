"""The meter model's physics, and the meter maps against the agent's profiles (no sockets)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from plc_sim.meter_modbus import METER_KINDS, MeterKind, datasheet_register, raw_values
from plc_sim.meters import Meter, MeterParams, initial_state, step
from plc_sim.registers import RegisterSpec, contiguous_runs, encode

PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"


def test_powers_are_consistent_with_voltage_current_and_power_factor() -> None:
    meter = Meter(seed=4)
    meter.advance(250.0)
    s = meter.state

    for k in range(3):
        apparent = s.voltage_v[k] * s.current_a[k]
        assert s.active_power_w[k] == pytest.approx(apparent * s.power_factor[k])
        assert s.reactive_power_var[k] == pytest.approx(math.sqrt(apparent**2 - s.active_power_w[k] ** 2))
    assert s.total_active_power_w == pytest.approx(sum(s.active_power_w))
    assert s.total_power_factor == pytest.approx(s.total_active_power_w / s.total_apparent_power_va)
    # A balanced 230 V system: ~400 V between lines, a small neutral current.
    assert all(390 < v < 410 for v in s.line_voltage_v)
    assert s.neutral_current_a < 0.3 * max(s.current_a)


def test_values_stay_plausible_and_move_over_an_hour() -> None:
    meter = Meter(seed=9)
    seen_currents: list[float] = []
    for _ in range(3600):
        meter.advance(1.0)
        s = meter.state
        assert all(220 <= v <= 240 for v in s.voltage_v)
        assert 49.85 <= s.frequency_hz <= 50.15
        assert all(0.69 <= pf <= 0.96 for pf in s.power_factor)
        seen_currents.append(s.current_a[0])
    # The load cycle shows: the current spans most of base ± cycle amplitude.
    params = MeterParams()
    assert max(seen_currents) - min(seen_currents) > params.cycle_current_a


def test_import_energy_is_the_integral_of_active_power() -> None:
    rng = random.Random(1)
    params = MeterParams()
    state = initial_state()
    integral_wh = 0.0
    for _ in range(2000):
        integral_wh += state.total_active_power_w * 0.5 / 3600.0
        state = step(state, 0.5, rng, params)

    assert state.import_energy_wh - initial_state().import_energy_wh == pytest.approx(integral_wh)
    assert state.export_energy_wh == initial_state().export_energy_wh  # the load never feeds back


def test_same_seed_same_meter() -> None:
    a, b = Meter(seed=2), Meter(seed=2)
    a.advance(100.0)
    b.advance(100.0)
    assert a.state == b.state


@pytest.mark.parametrize("kind", sorted(METER_KINDS))
def test_meter_maps_are_sane(kind: str) -> None:
    registers = METER_KINDS[kind].registers

    contiguous_runs(r.spec for r in registers)  # raises on an overlap
    assert 15 <= len(registers) <= 30
    assert len({r.name for r in registers}) == len(registers)
    assert any(r.counter for r in registers)


def profile_of(kind: MeterKind) -> dict[str, object]:
    data: dict[str, object] = YAML(typ="safe").load((PROFILES / f"{kind.profile}.yaml").read_text())
    return data


@pytest.mark.parametrize("kind", sorted(METER_KINDS))
def test_profile_describes_exactly_the_registers_the_simulator_serves(kind: str) -> None:
    meter = METER_KINDS[kind]
    profile = profile_of(meter)
    default_order = profile["byte_order"]

    assert profile["profile"] == meter.profile
    assert profile["source"] == meter.source
    described = {
        tag["name"]: (
            tag["register"], tag["type"], tag.get("scale", 1.0), tag.get("unit", ""),
            tag.get("counter", False), tag.get("byte_order", default_order),
        )
        for tag in profile["tags"]  # type: ignore[attr-defined]
    }
    served = {
        r.name: (
            datasheet_register(r), r.type, r.scale, r.unit, r.counter,
            r.word_order if r.spec.count > 1 else default_order,
        )
        for r in meter.registers
    }
    assert described == served


# Spot facts from the public maps each profile cites in its header (datasheet numbering): the
# test above holds the profile and the simulator together, this one holds both to the meter.
PUBLISHED = {
    "sdm630": {"total_power_w": 30053, "frequency_hz": 30071, "import_energy_kwh": 30073,
               "voltage_l1_l2_v": 30201, "neutral_current_a": 30225},
    "iem3000": {"current_l1_a": 43000, "total_power_kw": 43060, "total_power_factor": 43084,
                "frequency_hz": 43110, "import_energy_wh": 43204, "export_energy_wh": 43208},
    "em24": {"total_power_w": 40041, "total_power_factor": 40050, "frequency_hz": 40052,
             "import_energy_kwh": 40053, "export_energy_kwh": 40079},
}


@pytest.mark.parametrize("kind", sorted(PUBLISHED))
def test_maps_put_key_quantities_at_the_published_register_numbers(kind: str) -> None:
    numbers = {r.name: datasheet_register(r) for r in METER_KINDS[kind].registers}

    assert {name: numbers[name] for name in PUBLISHED[kind]} == PUBLISHED[kind]


def test_em24_int32_is_low_word_first_and_scaled() -> None:
    em24 = METER_KINDS["em24"]
    raw = raw_values(em24, initial_state())
    energy = next(r for r in em24.registers if r.name == "import_energy_kwh")

    assert raw["import_energy_kwh"] == 482_138  # 48 213.75 kWh in tenths, rounded
    assert encode(energy.spec, raw["import_energy_kwh"]) == [482_138 & 0xFFFF, 482_138 >> 16]


def test_int64_energy_is_big_endian_high_word_first() -> None:
    spec = RegisterSpec("e", "holding", 3203, "int64")

    assert encode(spec, 0x0001_0002_0003_0004) == [1, 2, 3, 4]
    assert encode(spec, -1) == [0xFFFF] * 4
