"""A tag's `valid_range`: a value its sensor cannot deliver (a broken 4-20 mA loop, a
register decoded in the wrong byte order) is a BAD sample for every detector of the device,
reported as a quality change and logged once, and never poisons what a rule learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import structlog

from agent.cli.check import summary
from agent.config import ConfigError, load_config
from agent.detect.base import Detector
from agent.events import ANOMALY, QUALITY, WINDOW, Event
from agent.testing import device_detector, offline_config
from drivers.samples import SampleBatch

S = 1_000_000_000
T0 = 1_700_000_000 * S
GARBAGE = 3.4e38  # a float32 register read in the wrong word order decodes as about this


def config(tmp_path: Path, valid_range: str = "", protocol: str = "modbus") -> Path:
    extra = f", valid_range: {valid_range}" if valid_range else ""
    device = ("    protocol: modbus-tcp\n    host: 127.0.0.1\n    tags:\n"
              f"      - {{name: temp_c, address: 0, type: float32, unit: °C{extra}}}\n"
              "      - {name: other, address: 2, type: float32}"
              if protocol == "modbus" else
              "    protocol: opcua\n    endpoint: opc.tcp://127.0.0.1:4840\n    tags:\n"
              f"      - {{name: temp_c, node: \"ns=2;s=T\", unit: °C{extra}}}\n"
              "      - {name: other, node: \"ns=2;s=O\"}")
    return offline_config(tmp_path, f"""
aggregate: {{window_s: 10}}
devices:
  - name: m
{device}
detectors:
  - {{device: m, kind: zscore, name: level, tags: [temp_c], warmup_samples: 50,
     baseline_halflife_samples: 200}}
""")


detector = device_detector


def run(det: Detector, temps: list[float]) -> list[tuple[int, Event]]:
    out = []
    for i, t in enumerate(temps):
        batch = SampleBatch("m", ("temp_c", "other"), np.array([t, 1.0]),
                            np.zeros(2, dtype=np.uint8), T0 + i * S, i * S)
        out += [(i, e) for e in det.on_batch(batch)]
    return out


def temperatures() -> list[float]:
    """60 °C with noise; one garbage value while the rule learns; overheating from 200 on."""
    rng = np.random.default_rng(4)
    temps = list(60.0 + rng.normal(0.0, 0.5, 300))
    temps[20] = GARBAGE
    for i in range(200, 300):
        temps[i] += 8.0
    return temps


def test_without_a_range_one_garbage_value_while_learning_hides_a_real_fault(
        tmp_path: Path) -> None:
    """What the range is for: the garbage value is a GOOD sample and becomes the baseline's
    variance, and the overheating 16 standard deviations out raises nothing."""
    events = run(detector(config(tmp_path)), temperatures())
    assert [e for _, e in events if e.kind == ANOMALY] == []


@pytest.mark.parametrize("protocol", ["modbus", "opcua"])
def test_a_value_outside_its_range_is_bad_for_every_detector_and_said_once(
        tmp_path: Path, protocol: str) -> None:
    with structlog.testing.capture_logs() as logs:
        events = run(detector(config(tmp_path, "[-40, 150]", protocol)), temperatures())
    anomalies = [(i, e) for i, e in events if e.kind == ANOMALY]
    assert anomalies and anomalies[0][0] >= 200, "the real fault is caught, not the garbage"
    quality = [(i, e.data["tags"]) for i, e in events if e.kind == QUALITY]
    assert quality == [(20, {"temp_c": {"quality": "bad", "previous": "good"}}),
                       (21, {"temp_c": {"quality": "good", "previous": "bad"}})]
    windows = [e.data["tags"]["temp_c"] for _, e in events if e.kind == WINDOW]
    assert sum(w["bad"] for w in windows) == 1, "the garbage counted as a bad sample"
    assert max(w["max"] for w in windows) < 80, "and in no statistic"
    said = [(e["event"], e.get("value")) for e in logs
            if e["event"] in ("value_out_of_range", "value_back_in_range")]
    assert said == [("value_out_of_range", GARBAGE), ("value_back_in_range", temperatures()[21])]


def test_a_range_upside_down_is_refused_with_its_line(tmp_path: Path) -> None:
    path = config(tmp_path, "[150, -40]")
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1)
                if "valid_range" in text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.lines == [(
        f"{path}:{line}: devices[0].tags[0].valid_range: the low end (150) must be below the high "
        "end (-40): [low, high] in the tag's unit")]


@pytest.mark.parametrize("protocol", ["modbus", "opcua"])
def test_check_shows_each_tags_range(tmp_path: Path, protocol: str) -> None:
    loaded = load_config(config(tmp_path, "[-40, 150]", protocol), environ={})
    [line] = [s for s in summary(loaded) if "temp_c" in s and not s.startswith("rule ")]
    assert line.endswith("valid -40..150 °C") or "valid -40..150 °C)" in line
    assert not [s for s in summary(loaded) if "other" in s and "valid" in s]
