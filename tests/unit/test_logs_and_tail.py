"""Log rendering by terminal type, and the human-readable `tail` line."""

from __future__ import annotations

import io
import json

import structlog

from agent.cli.tail import format_line, topic_filter
from agent.events import Event, decode, encode
from agent.service.logs import configure_logging


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_logs_are_json_lines_when_not_on_a_tty() -> None:
    out = io.StringIO()
    configure_logging("info", stream=out)
    structlog.get_logger("t").warning("device_down", device="m1", reason="timeout")
    structlog.get_logger("t").debug("hidden", device="m1")
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "device_down" and record["device"] == "m1"
    assert record["level"] == "warning" and record["timestamp"].endswith("Z")


def test_logs_are_readable_on_a_tty() -> None:
    out = _Tty()
    configure_logging("debug", stream=out)
    structlog.get_logger("t").info("device_up", device="m1")
    text = out.getvalue()
    assert "device_up" in text and "device" in text and "m1" in text
    assert not text.lstrip().startswith("{")


def test_tail_line_of_a_window() -> None:
    data = {"start_ns": 0, "end_ns": 1, "tags": {
        "power_w": {"n": 3, "bad": 0, "unit": "W", "min": 1.0, "max": 3.0, "mean": 2.0,
                    "std": 0.8, "last": 3.0},
        "flow": {"n": 0, "bad": 2, "unit": ""},
    }}
    env = decode(encode(Event("window", "m1", 1_763_900_000_123_000_000, data), gateway="gw", seq=7))
    line = format_line(env)
    assert line.startswith("2025-11-23T12:13:20.123Z gw #7 m1 window ")
    assert "power_w=3 W [1..3 mean 2 n=3]" in line and "flow=? [bad=2]" in line


def test_tail_line_of_a_change() -> None:
    data = {"tags": {"state": {"value": 2.0, "previous": 1.0, "unit": ""},
                     "recipe": {"value": "B-3", "previous": None, "unit": ""}}}
    line = format_line(decode(encode(Event("change", "m1", 1_763_900_000_123_000_000, data),
                                     gateway="gw", seq=8)))
    assert line.endswith("gw #8 m1 change state=2 (was 1); recipe=B-3")


def test_tail_subscription_covers_the_template() -> None:
    assert topic_filter("{site}/{gateway}/{device}/{kind}", site="s", gateway="g") == "s/g/+/+"
    assert topic_filter("plants/{gateway}/{kind}") == "plants/+/+"


def test_tail_shows_a_meter_reading_to_the_last_digit_and_its_increase() -> None:
    data = {"start_ns": 0, "end_ns": 1, "tags": {
        "energy_kwh": {"n": 2, "bad": 0, "unit": "kWh", "min": 48213.87, "max": 48213.95,
                       "mean": 48213.91, "std": 0.04, "last": 48213.95, "increase": 0.08}}}
    line = format_line(decode(encode(Event("window", "m1", 1_763_900_000_123_000_000, data),
                                     gateway="gw", seq=9)))
    assert "energy_kwh=48213.95 kWh +0.08 [48213.87..48213.95 mean 48213.9 n=2]" in line


def test_tail_shows_a_float32_register_with_its_own_digits() -> None:
    import numpy as np

    reading = float(np.float32(3.79579))  # 3.7957899570465088 as float64
    data = {"tags": {"current_a": {"value": reading, "previous": None, "unit": "A"}}}
    line = format_line(decode(encode(Event("change", "m1", 1_763_900_000_123_000_000, data),
                                     gateway="gw", seq=10)))
    assert line.endswith("current_a=3.79579 A")
