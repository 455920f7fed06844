"""`edge-agent replay`: a device's detectors over a recorded CSV (small files written here)."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from agent.cli.main import EXIT_CONFIG, main
from agent.cli.replay import Row, parse_time, replay
from agent.events import Event
from drivers.samples import SampleBatch

CONFIG = """
gateway: {{id: gw-replay, state_dir: {state}}}
mqtt: {{host: 127.0.0.1, tls: {{enabled: false}}}}
aggregate: {{window_s: 60}}
devices:
  - name: press-1
    protocol: modbus-tcp
    host: 127.0.0.1
    poll_interval_s: 1.0
    tags:
      - {{name: power_w, address: 0, type: float32, unit: W}}
      - {{name: energy_wh, address: 2, type: uint32, counter: true}}
machines:
  - name: press
    device: press-1
    power_tag: power_w
    energy_counter_tag: energy_wh
    energy_counter_unit: Wh
    idle_above_w: 100
    running_above_w: 1000
    min_dwell_s: 2
"""


def write(tmp_path: Path, header: str, lines: list[str]) -> tuple[Path, Path]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(state=tmp_path / "state"))
    data = tmp_path / "data.csv"
    data.write_text("\n".join([header, *lines]) + "\n")
    return config, data


def test_replay_prints_state_changes_and_reports(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    lines = [f"2026-03-02T08:00:{s:02d}Z,{3000.0 if s < 20 else 500.0},{1000 + s}"
             for s in range(40)]
    config, data = write(tmp_path, "time,power_w,energy_wh", lines)
    assert main(["replay", "-c", str(config), "--csv", str(data), "--time-column", "time"]) == 0
    out = capsys.readouterr().out.splitlines()
    states = [line for line in out if " state " in line]
    assert len(states) == 2
    assert states[1].startswith("2026-03-02T08:00:20.000Z gw-replay")
    assert states[1].endswith("press: running -> idle after 20 s")
    assert any(" window " in line for line in out)
    [report] = [line for line in out if " energy " in line]
    # 20 Wh running, then 19 samples idle (the 2 s of dwell that confirm idle included)
    assert report.endswith("press interval: 0.039 kWh; idle 19 s 0.019 kWh, running 20 s "
                           "0.020 kWh; starts 0 (incomplete)")
    assert not (tmp_path / "state").exists(), "a replay never touches the agent's state"


def test_rows_without_time_are_one_poll_interval_apart(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config, data = write(tmp_path, "power_w", [str(3000.0 if i < 10 else 0.0) for i in range(20)])
    assert main(["replay", "-c", str(config), "--csv", str(data)]) == 0
    [_, change] = [line for line in capsys.readouterr().out.splitlines() if " state " in line]
    assert change.startswith("2026-01-01T00:00:10.000Z") and change.endswith("-> off after 10 s")


def test_columns_that_are_not_tags_are_named(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config, data = write(tmp_path, "when,power_w,pressure", ["0,1,2"])
    assert main(["replay", "-c", str(config), "--csv", str(data)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "when, pressure are not tags of device 'press-1'" in err
    assert "its tags: power_w, energy_wh" in err and "--time-column" in err


def test_a_bad_number_names_its_line_and_column(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config, data = write(tmp_path, "power_w,energy_wh", ["1,2", "abc,3"])
    assert main(["replay", "-c", str(config), "--csv", str(data)]) == EXIT_CONFIG
    assert "data.csv:3: power_w: 'abc' is not a number" in capsys.readouterr().err


def test_times_parse_as_iso_or_epoch_seconds() -> None:
    assert parse_time("1700000000.5") == 1_700_000_000_500_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000_000_000_000
    assert parse_time("2023-11-14T23:13:20.25+01:00") == 1_700_000_000_250_000_000
    with pytest.raises(ValueError, match="neither ISO 8601 nor epoch"):
        parse_time("yesterday")


class ScoringDetector:
    """A detector that scores every sample (the interface part A's detectors implement)."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        self.last = {f"{t}.z": float(v) * 2 for t, v in zip(batch.tags, batch.values, strict=True)}
        return []

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        return []

    def flush(self, time_ns: int) -> list[Event]:
        return []

    def scores(self) -> Mapping[str, float]:
        return self.last


def test_scores_are_written_per_row(tmp_path: Path) -> None:
    rows = iter([Row(0, {"a": 1.0, "b": None}), Row(10**9, {"a": 2.0, "b": float("nan")})])
    written: list[tuple[int, dict[str, float]]] = []
    assert replay(ScoringDetector(), "d", rows, lambda e: None,
                  lambda t, s: written.append((t, dict(s)))) == 2
    assert written[0] == (0, {"a.z": 2.0})
    assert written[1][1]["a.z"] == 4.0 and np.isnan(written[1][1]["b.z"])


def test_scores_file_has_a_column_per_score(tmp_path: Path) -> None:
    from agent.cli.replay import write_scores

    path = tmp_path / "scores.csv"
    write_scores(path, [(0, {"a.z": 1.0}), (10**9, {"a.z": 2.0, "b.z": 3.0})])
    rows = list(csv.reader(path.open()))
    assert rows == [["time", "a.z", "b.z"], ["1970-01-01T00:00:00+00:00", "1.0", ""],
                    ["1970-01-01T00:00:01+00:00", "2.0", "3.0"]]


BAND_CONFIG = """
gateway: {{id: gw-replay, state_dir: {state}}}
mqtt: {{host: 127.0.0.1, tls: {{enabled: false}}}}
devices:
  - name: pump-1
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840
    tags:
      - {{name: vib, node: "ns=2;s=Pump.Vibration", max_array_length: 1024, unit: mm/s}}
detectors:
  - device: pump-1
    kind: band_rms
    name: pump-bearing
    tags: [vib]
    sample_rate_hz: 10240
    fft_samples: 512
    bands:
      - {{name: bearing, low_hz: 500, high_hz: 2000}}
"""


def test_a_recording_of_vibration_captures_replays_with_band_rms(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One row per sample; the 1,024 samples of a capture share its time, so they continue
    one capture (a rule on captures starts a new one at a batch of another time). Without a
    time column the rows are a poll apart: every sample its own capture, never a block."""
    config = tmp_path / "config.yaml"
    config.write_text(BAND_CONFIG.format(state=tmp_path / "state"))
    rng = np.random.default_rng(1)
    lines = []
    t = np.arange(1024) / 10240
    for k in range(14):  # 3 blocks each: learned after 7
        x = 1.5 * np.sin(2 * np.pi * 24.8 * t) + rng.normal(0, 0.05, 1024)
        if k >= 10:
            x += 0.3 * np.sin(2 * np.pi * 1370.0 * t)  # a bearing defect's tone
        lines += [f"2026-03-02T08:00:{k:02d}Z,{v:.6f}" for v in x]
    data = tmp_path / "vib.csv"
    data.write_text("\n".join(["time,vib", *lines]) + "\n")
    scores = tmp_path / "scores.csv"
    assert main(["replay", "-c", str(config), "--csv", str(data), "--time-column", "time",
                 "--scores", str(scores)]) == 0
    out = capsys.readouterr().out.splitlines()
    [start] = [line for line in out if " anomaly start " in line]
    assert start.startswith("2026-03-02T08:00:10.000Z gw-replay")
    assert "pump-bearing (band_rms band bearing)" in start
    header, *score_rows = list(csv.reader(scores.open()))
    assert header == ["time", "pump-bearing:vib:bearing"] and len(score_rows) == 14 * 1024
    untimed = tmp_path / "untimed.csv"
    untimed.write_text("\n".join(["vib", *(line.split(",")[1] for line in lines[:2048])]) + "\n")
    assert main(["replay", "-c", str(config), "--csv", str(untimed), "--scores", str(scores)]) == 0
    assert {row[1] for row in list(csv.reader(scores.open()))[1:]} == {"nan"}


GATED_RULE = """detectors:
  - {device: press-1, kind: limits, name: hot, tags: [energy_wh], high: 1e9,
     while_states: [running]}
"""


def test_a_gated_rule_needs_the_machines_signal_in_the_recording(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without the power column the rule would run never, silently: refused, saying why."""
    config, data = write(tmp_path, "energy_wh", ["1", "2"])
    config.write_text(config.read_text() + GATED_RULE)
    assert main(["replay", "-c", str(config), "--csv", str(data)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "no column 'power_w': rule 'hot' runs only while machine 'press' is in running" in err


def test_a_gated_rule_replays_with_nan_scores_outside_its_states(tmp_path: Path) -> None:
    lines = [f"{3000.0 if s < 10 else 20.0},{1000 + s}" for s in range(20)]
    config, data = write(tmp_path, "power_w,energy_wh", lines)
    config.write_text(config.read_text() + GATED_RULE)
    scores = tmp_path / "scores.csv"
    assert main(["replay", "-c", str(config), "--csv", str(data), "--scores", str(scores)]) == 0
    with open(scores, newline="") as f:
        rows = list(csv.DictReader(f))
    values = [row["hot:energy_wh"] for row in rows]
    assert all(v not in ("", "nan") for v in values[:10])
    assert all(v == "nan" for v in values[10:])


def test_several_devices_need_device_named(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config, data = write(tmp_path, "power_w", ["5"])
    text = config.read_text()
    second = text.split("devices:\n")[1].split("machines:")[0].replace("press-1", "press-2")
    config.write_text(text.replace("machines:", second + "machines:"))
    assert main(["replay", "-c", str(config), "--csv", str(data)]) == EXIT_CONFIG
    assert "2 devices: give --device (one of press-1, press-2)" in capsys.readouterr().err
    assert main(["replay", "-c", str(config), "--csv", str(data), "--device", "press-2"]) == 0
