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
    assert "power_w=3 W [1..3]" in line and "flow=? [bad=2]" in line


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
    assert "n=2: energy_kwh=48213.95 kWh +0.08" in line


def test_tail_shows_a_float32_register_with_its_own_digits() -> None:
    import numpy as np

    reading = float(np.float32(3.79579))  # 3.7957899570465088 as float64
    data = {"tags": {"current_a": {"value": reading, "previous": None, "unit": "A"}}}
    line = format_line(decode(encode(Event("change", "m1", 1_763_900_000_123_000_000, data),
                                     gateway="gw", seq=10)))
    assert line.endswith("current_a=3.79579 A")


def line_of(kind: str, data: dict[str, object], device: str = "m1") -> str:
    return format_line(decode(encode(Event(kind, device, 1_763_900_000_123_000_000, data),
                                     gateway="gw", seq=11)))


def test_tail_shows_a_scaled_register_without_float_noise() -> None:
    data = {"tags": {"pressure_bar": {"value": 677 * 0.01, "previous": None, "unit": "bar"}}}
    assert line_of("change", data).endswith("pressure_bar=6.77 bar")


def test_tail_words_a_heartbeat_as_status_does() -> None:
    data = {"reason": "periodic", "uptime_s": 30.574, "version": "0.1.0",
            "config_sha256": "a750f8692b59" + "0" * 52,
            "devices": {"compressor-1": {"status": "up", "reason": ""},
                        "meter": {"status": "down", "reason": "timeout"}},
            "store": {"depth": 1, "pending": 1, "oldest_age_s": 1.5, "bytes": 669,
                      "last_seq": 47, "dropped": {"window": 2}, "compacted": 0},
            "uplink": {"state": "connected", "last_error": "", "inflight": 0},
            "process": {"cpu_s": 1.234, "rss_bytes": 82 * 2**20}}
    line = line_of("heartbeat", data, "_gateway")
    assert line.endswith(
        "heartbeat periodic: up 30.574 s, version 0.1.0, config a750f8692b59; devices "
        "compressor-1 up, meter down (timeout); store 1 waiting, last #47, 2 dropped; uplink "
        "connected, 0 in flight; 1.2 s CPU, 82 MiB"), line
    assert "{" not in line


def test_tail_words_an_episode() -> None:
    limit = {"phase": "start", "episode": "e" * 32, "rule": "discharge-overheating",
             "detector": "limits", "threshold": 85.0, "bound": "high", "limit": 85.0,
             "max_excess": 10.100000000000009, "peak_value": 95.10000000000001,
             "start_ns": 1, "peak_ns": 2,
             "tags": {"discharge_temp_c": {"before": [86.3, 87.7] * 20}}}
    assert line_of("limit", limit).endswith(
        "limit start discharge-overheating (limits): high limit 85, at worst 95.1 "
        "(10.1 past it); discharge_temp_c")
    anomaly = {"phase": "end", "episode": "f" * 32, "rule": "temp-unusual",
               "detector": "zscore", "threshold": 5.0, "score": 7.25, "peak_value": 88.5,
               "start_ns": 1, "peak_ns": 2, "end_ns": 3, "duration_s": 41.27, "ongoing": True,
               "ended_by": "machine_state", "tags": {"discharge_temp_c": {}}}
    assert line_of("anomaly", anomaly).endswith(
        "anomaly end temp-unusual (zscore): score 7.25 over 5, value 88.5 at the peak; "
        "discharge_temp_c; lasted 41.3 s (cut short: the machine left the rule's states)")


def test_tail_words_device_health_and_cuts_other_kinds_short() -> None:
    down = {"status": "down", "reason": "timeout", "detail": "no answer within 1.0 s",
            "address": "input 0+9"}
    assert line_of("device_health", down).endswith(
        "device_health down (timeout) at input 0+9: no answer within 1.0 s")
    assert line_of("device_health", {"status": "up", "reason": "", "detail": ""}).endswith(
        "device_health up")
    odd = line_of("store_health", {"dropped": {"samples": 3}, "blob": "x" * 1000})
    assert len(odd) < 300 and odd.endswith("...") and 'dropped={"samples":3}' in odd
