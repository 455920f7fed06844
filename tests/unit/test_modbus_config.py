"""The Modbus tag and device model: datasheet notation, types, profiles, shared lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config.models import AgentConfig
from drivers.modbus.codec import decode_string, decode_tag
from drivers.modbus.config import ModbusTag, ModbusTcpDevice, parse_register


@pytest.mark.parametrize(
    ("register", "table", "address"),
    [
        (1, "coil", 0), (9999, "coil", 9998), (10001, "discrete", 0), (30001, "input", 0),
        (39999, "input", 9998), (40001, "holding", 0), (40101, "holding", 100),
        (100001, "discrete", 0), (365536, "input", 65535), (400001, "holding", 0),
        (465536, "holding", 65535), ("010001", "coil", 10000), ("065536", "coil", 65535),
    ],
)
def test_datasheet_register_notation(register: int | str, table: str, address: int) -> None:
    assert parse_register(register) == (table, address)


@pytest.mark.parametrize("register", [0, 10000, 20001, 30000, 40000, 50001, 465537, "4x0001", 99])
def test_numbers_outside_the_notation_are_refused(register: int | str) -> None:
    if register == 99:
        assert parse_register(register) == ("coil", 98)  # a coil, not an error
        return
    with pytest.raises(ValueError, match="datasheet notation|not a number like 40001"):
        parse_register(register)


def tag(**fields: Any) -> ModbusTag:
    return ModbusTag.model_validate({"name": "t", **fields})


def test_a_tag_remembers_how_its_address_was_written() -> None:
    assert tag(register=40101, type="uint16").describe_address() == "register 40101 = holding 100 (zero-based)"
    assert tag(table="input", address=3, type="int16").describe_address() == "input 3 (zero-based)"
    assert tag(register=30001, type="bool", bit=4).describe_address() == "register 30001 = input 0 bit 4 (zero-based)"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"register": 40001, "address": 0, "type": "uint16"}, "either register"),
        ({"type": "uint16"}, "give the tag's address"),
        ({"register": 40001}, "needs a type"),
        ({"register": 40001, "type": "bool"}, "needs bit"),
        ({"register": 40001, "type": "uint16", "bit": 3}, "bit applies to a bool"),
        ({"register": 1, "type": "uint16"}, "type is bool"),
        ({"table": "discrete", "address": 0, "bit": 2}, "does not apply to a discrete"),
        ({"register": 40001, "type": "string"}, "needs length_registers"),
        ({"register": 40001, "type": "uint16", "length_registers": 2}, "applies to a string"),
        ({"register": 1, "counter": True}, "cannot be a counter"),
        ({"register": 465535, "type": "float64"}, "ends past register 65535"),
    ],
)
def test_inconsistent_tags_are_refused_with_the_reason(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        tag(**fields)


def test_coils_are_bool_by_default_and_counters_know_where_they_wrap() -> None:
    assert tag(register=17).type == "bool"
    assert tag(register=17).is_bit
    assert tag(register=30001, type="uint32", counter=True, scale=0.1).counter_modulus == pytest.approx(2**32 * 0.1)
    assert tag(register=30001, type="float32", counter=True).counter_modulus is None


def test_strings_and_bits_decode_in_each_byte_order() -> None:
    words = [0x4142, 0x4300]  # "ABC\0"
    assert decode_string(words, "ABCD") == "ABC"
    assert decode_string(words, "BADC") == "BA\x00C"
    assert decode_string([0x4241, 0x0043], "DCBA") == "ABC"
    bit = tag(register=40001, type="bool", bit=9)
    assert decode_tag(bit, [0x0200], "ABCD") == 1
    assert decode_tag(bit, [0x0200], "BADC") == 0
    assert decode_tag(bit, [0x0002], "BADC") == 1


def _device(tmp_path: Path, **fields: Any) -> ModbusTcpDevice:
    data = {"name": "m", "protocol": "modbus-tcp", "host": "h", **fields}
    return ModbusTcpDevice.model_validate(data, context={"config_dir": tmp_path})


def test_a_profile_brings_its_tags_and_the_device_adds_or_replaces(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "meter.yaml").write_text(
        "profile: meter\ndescription: a meter\nsource: datasheet v1\nbyte_order: CDAB\n"
        "tags:\n"
        "  - {name: voltage_v, register: 30001, type: float32, unit: V}\n"
        "  - {name: energy_kwh, register: 30073, type: float32, unit: kWh, counter: true}\n"
    )
    device = _device(tmp_path, profile="meter", tags=[
        {"name": "energy_kwh", "register": 30073, "type": "float32", "unit": "kWh", "share": "raw"},
        {"name": "extra", "register": 40001, "type": "uint16"},
    ])
    assert [t.name for t in device.tags] == ["voltage_v", "energy_kwh", "extra"]
    assert device.tags[1].share == "raw"
    assert device.byte_order == "CDAB"
    assert _device(tmp_path, profile="meter", byte_order="ABCD").byte_order == "ABCD"


def test_profile_errors_name_the_profile_file(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "bad.yaml").write_text(
        "profile: bad\ntags:\n  - {name: v, register: 30001, type: flaot32}\n"
    )
    with pytest.raises(ValidationError, match=r"profile .*bad.yaml: tags\[0\].type"):
        _device(tmp_path, profile="bad")
    with pytest.raises(ValidationError, match="unknown profile 'nope'; known: .*bad"):
        _device(tmp_path, profile="nope")


def test_every_shipped_profile_is_a_complete_device(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "config" / "profiles"
    names = sorted(p.stem for p in shipped.glob("*.yaml"))
    for name in names:
        device = _device(tmp_path, profile=name)
        assert device.tags, name


def _config(*devices: dict[str, Any]) -> AgentConfig:
    return AgentConfig.model_validate({
        "gateway": {"id": "gw"}, "mqtt": {"host": "b"},
        "devices": [{"tags": [{"name": "t", "register": 40001, "type": "uint16"}], **d} for d in devices],
    })


RTU = {"protocol": "modbus-rtu", "serial_port": "/dev/ttyUSB0"}


def test_slaves_on_one_serial_bus_need_their_own_unit_and_the_same_settings() -> None:
    _config({"name": "a", **RTU, "unit": 1}, {"name": "b", **RTU, "unit": 2})
    with pytest.raises(ValidationError, match="both unit 1 on the same serial line"):
        _config({"name": "a", **RTU}, {"name": "b", **RTU})
    with pytest.raises(ValidationError, match="share a line but not its baudrate"):
        _config({"name": "a", **RTU, "unit": 1}, {"name": "b", **RTU, "unit": 2, "baudrate": 19200})
    # One TCP device may be configured as two (e.g. shared differently): allowed.
    tcp = {"protocol": "modbus-tcp", "host": "10.0.0.5"}
    _config({"name": "a", **tcp}, {"name": "b", **tcp})


def test_poll_groups_are_declared_before_use() -> None:
    with pytest.raises(ValidationError, match="poll group 'fast' is not one of default, slow"):
        _config({"name": "a", "protocol": "modbus-tcp", "host": "h", "poll_groups": {"slow": 60},
                 "tags": [{"name": "t", "register": 40001, "type": "uint16", "poll_group": "fast"}]})
