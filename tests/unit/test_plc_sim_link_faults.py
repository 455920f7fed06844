"""Fault descriptions, their matching, and what each does to an answer's bytes (no sockets)."""

from __future__ import annotations

import random
import struct

import pytest

from plc_sim.link_faults import (
    FRAME_FAULTS,
    REGISTER_FAULTS,
    Fault,
    FaultPlan,
    crc16_modbus,
    mangle,
    with_crc,
)

MBAP_ANSWER = struct.pack(">HHHBBB", 0x0102, 0, 5, 1, 4, 2) + b"\x00\x2a"
RTU_ANSWER = with_crc(bytes([1, 4, 2, 0x00, 0x2A]))


def test_crc16_modbus_known_vector() -> None:
    # "Read holding registers, unit 1, address 0, count 1" is 01 03 00 00 00 01 84 0A.
    assert with_crc(bytes.fromhex("010300000001")) == bytes.fromhex("010300000001840a")
    assert crc16_modbus(b"123456789") == 0x4B37


def test_a_control_message_becomes_a_fault() -> None:
    fault = Fault.from_json({"fault": "exception", "code": 6, "table": "input", "first": 4,
                             "last": 5, "endpoint": "modbus-tcp"})

    assert fault == Fault("exception", code=6, table="input", first=4, last=5)
    assert Fault.from_json(fault.as_json()) == fault


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"fault": "explode"}, "unknown fault 'explode'"),
        ({"fault": "delay", "secs": 2}, "unknown fault option(s): secs"),
        ({"fault": "delay", "seconds": -1}, "seconds must be >= 0"),
        ({"fault": "exception", "code": 9}, "exception code 9 cannot be sent"),
        ({"fault": "exception", "table": "coil"}, "table must be"),
        ({"fault": "exception", "first": 5, "last": 4}, "first <= last"),
        ({"fault": "no_answer", "times": 0}, "times must be >= 1"),
        ({"fault": "words"}, "a words fault needs the register values"),
        ({"fault": "words", "words": [65536]}, "words must be register values"),
    ],
)
def test_a_bad_control_message_names_its_problem(message: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        Fault.from_json(message)


def test_a_fault_applies_to_its_unit_table_and_address_range_only() -> None:
    plan = FaultPlan()
    plan.set(Fault("exception", code=2, unit=2, table="input", first=10, last=11))

    assert plan.take(REGISTER_FAULTS, 2, "input", 11, 2) is not None  # overlaps 11
    assert plan.take(REGISTER_FAULTS, 2, "input", 8, 2) is None  # 8..9
    assert plan.take(REGISTER_FAULTS, 2, "holding", 10, 1) is None
    assert plan.take(REGISTER_FAULTS, 1, "input", 10, 1) is None
    assert plan.take(FRAME_FAULTS, 2) is None  # an exception is not a frame fault


def test_times_limits_a_fault_to_the_next_requests() -> None:
    plan = FaultPlan()
    plan.set(Fault("no_answer", times=2))

    assert plan.take(FRAME_FAULTS, 1) is not None
    assert plan.take(FRAME_FAULTS, 1) is not None
    assert plan.take(FRAME_FAULTS, 1) is None
    assert plan.current.kind == "none"


def test_frame_faults_on_tcp_answers() -> None:
    rng = random.Random(0)

    assert mangle("no_answer", "socket", MBAP_ANSWER, rng) == b""
    tid = struct.unpack(">H", mangle("wrong_tid", "socket", MBAP_ANSWER, rng)[:2])[0]
    assert tid != 0x0102
    length = struct.unpack(">H", mangle("wrong_length", "socket", MBAP_ANSWER, rng)[4:6])[0]
    assert length != len(MBAP_ANSWER) - 6
    assert mangle("wrong_unit", "socket", MBAP_ANSWER, rng)[6] == 2
    garbage = mangle("garbage", "socket", MBAP_ANSWER, rng)
    assert len(garbage) == len(MBAP_ANSWER) and garbage != MBAP_ANSWER


def test_frame_faults_on_rtu_answers() -> None:
    rng = random.Random(0)

    bad = mangle("bad_crc", "rtu", RTU_ANSWER, rng)
    assert bad[:-2] == RTU_ANSWER[:-2] and with_crc(bad[:-2]) != bad
    other = mangle("wrong_unit", "rtu", RTU_ANSWER, rng)
    assert other[0] == 2 and with_crc(other[:-2]) == other  # a valid frame, from unit 2
    short = mangle("wrong_length", "rtu", RTU_ANSWER, rng)
    assert len(short) < len(RTU_ANSWER)


def test_the_kind_is_given_as_fault_not_as_kind() -> None:
    with pytest.raises(ValueError, match="unknown fault option"):
        Fault.from_json({"fault": "delay", "kind": "no_answer"})
