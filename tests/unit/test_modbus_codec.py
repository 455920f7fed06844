"""Register decoding for every type and byte order."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.codec import RequestDecoder, decode, decode_tag, encode
from drivers.modbus.config import REGISTERS_PER_TYPE, ModbusTag

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")

# 123456.0 as float32 is 0x47F12000: bytes A=47 B=F1 C=20 D=00.
@pytest.mark.parametrize(
    ("order", "words"),
    [
        ("ABCD", [0x47F1, 0x2000]),
        ("CDAB", [0x2000, 0x47F1]),
        ("BADC", [0xF147, 0x0020]),
        ("DCBA", [0x0020, 0xF147]),
    ],
)
def test_float32_in_each_byte_order(order: str, words: list[int]) -> None:
    assert decode(words, "float32", order) == 123456.0  # type: ignore[arg-type]


def test_int16_sign_and_byte_swap() -> None:
    assert decode([0xFFFE], "int16", "ABCD") == -2
    assert decode([0xFEFF], "int16", "BADC") == -2
    assert decode([0xFFFE], "uint16", "CDAB") == 0xFFFE


def test_uint64_word_order() -> None:
    words = [0x0001, 0x0002, 0x0003, 0x0004]
    assert decode(words, "uint64", "ABCD") == 0x0001000200030004
    assert decode(words, "uint64", "CDAB") == 0x0004000300020001


def test_wrong_register_count_is_refused() -> None:
    with pytest.raises(ValueError, match="float32 needs 2 registers"):
        decode([1], "float32", "ABCD")


@given(
    type_=st.sampled_from(sorted(set(REGISTERS_PER_TYPE) - {"bool"})),
    order=st.sampled_from(ORDERS),
    data=st.data(),
)
def test_encode_then_decode_round_trips(type_: str, order: str, data: st.DataObject) -> None:
    bits = {"int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64}
    if type_ == "float32":
        value = data.draw(st.floats(width=32, allow_nan=False))
    elif type_ == "float64":
        value = data.draw(st.floats(allow_nan=False))
    else:
        n = bits[type_]
        lo, hi = (0, 2**n - 1) if type_.startswith("u") else (-(2 ** (n - 1)), 2 ** (n - 1) - 1)
        value = data.draw(st.integers(lo, hi))
    words = encode(value, type_, order)  # type: ignore[arg-type]
    assert len(words) == REGISTERS_PER_TYPE[type_]
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(words, type_, order) == value  # type: ignore[arg-type]


_NUMERIC = ["int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64"]


@given(
    specs=st.lists(st.tuples(st.sampled_from([*_NUMERIC, "bool", "string"]), st.integers(0, 12),
                             st.sampled_from([None, *ORDERS]), st.integers(0, 15)),
                   min_size=1, max_size=6),
    device_order=st.sampled_from(ORDERS),
    words=st.lists(st.integers(0, 65535), min_size=20, max_size=20),
)
def test_the_request_decoder_equals_decoding_tag_by_tag(
    specs: list[tuple[str, int, str | None, int]], device_order: str, words: list[int]
) -> None:
    """The fast path of the driver against the plain codec, for every type and order."""
    tags = []
    for i, (type_, address, order, bit) in enumerate(specs):
        tags.append(ModbusTag.model_validate({
            "name": f"t{i}", "address": address, "type": type_, "byte_order": order,
            "bit": bit if type_ == "bool" else None, "scale": 0.5, "offset": 1.0,
            "length_registers": 3 if type_ == "string" else None,
        }))
    fast = RequestDecoder(tags, 0, 20, device_order).decode(words)  # type: ignore[arg-type]
    for tag, got in zip(tags, fast, strict=True):
        raw = decode_tag(tag, words[tag.address : tag.address + tag.register_count],
                         device_order)  # type: ignore[arg-type]
        want = raw if isinstance(raw, str) else float(raw) * 0.5 + 1.0
        both_nan = isinstance(got, float) and isinstance(want, float) and math.isnan(got) and math.isnan(want)
        assert got == want or both_nan, (tag, got, want)


def test_read_prints_64_bit_integers_exactly() -> None:
    import io
    import struct

    from agent.cli.modbus import print_readings
    from drivers.modbus.config import ModbusTcpDevice
    from drivers.modbus.driver import TagReading

    device = ModbusTcpDevice.model_validate({
        "name": "m", "protocol": "modbus-tcp", "host": "127.0.0.1",
        "tags": [{"name": "big", "address": 0, "type": "int64"},
                 {"name": "count", "address": 4, "type": "uint64"}]})
    readings = []
    for tag, fmt, value in zip(device.tags, (">q", ">Q"),
                               (-1234567890123456789, 18446744073709551557), strict=True):
        words = list(struct.unpack(">4H", struct.pack(fmt, value)))
        readings.append(TagReading(tag, words, float(value)))
    out = io.StringIO()
    print_readings(device, readings, out)
    assert "-1234567890123456789\n" in out.getvalue()
    assert "18446744073709551557" in out.getvalue()
