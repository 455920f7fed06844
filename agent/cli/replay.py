"""`edge-agent replay`: the device's detectors run offline over a recorded CSV file.

For tuning thresholds on data recorded from the machine: one CSV row is one poll batch
(one column per tag, the device's tag names as headers), fed to the same detectors the
agent builds (`make_detector`); every event is printed as `edge-agent tail` prints it, and
per-sample scores of the detectors that give them (`scores()`) can be written to a CSV.

Times come from `--time-column` (ISO 8601, naive means UTC, or epoch seconds), else the
device's poll interval from REPLAY_START_NS. The batch's monotonic time is its time since
the first row, so windows, dwell times and integration follow the recorded clock. A run
never touches the agent's state directory: machine counters go to a temporary one.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from agent.cli.tail import format_line
from agent.config.models import AgentConfig, DeviceConfig
from agent.detect.base import Detector
from agent.detect.device import make_detector
from agent.detect.state_file import wait_all_saved
from agent.events import Event, decode, encode
from drivers.samples import Quality, SampleBatch

REPLAY_SAVE_WAIT_S = 60.0
"""How long the replay waits for the detectors' state to be written into its temporary
directory: a replay runs hours of data in seconds, saves included."""
REPLAY_START_NS = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000_000
"""Time of the first row when the CSV has no time column."""


class ReplayError(ValueError):
    """The CSV cannot be replayed (wrong columns, a bad number or time): the message says where."""


@dataclass(frozen=True, slots=True)
class Row:
    time_ns: int
    values: dict[str, float | None]
    """Tag -> value; None for an empty cell (the tag was not read in that poll)."""


def parse_time(text: str) -> int:
    """UTC nanoseconds of an ISO 8601 time (naive: UTC) or of epoch seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"{text!r} is not a time")
        return round(seconds * 1e9)
    try:
        moment = dt.datetime.fromisoformat(text)  # 3.11: also "Z" and most of ISO 8601
    except ValueError:
        raise ValueError(f"{text!r} is neither ISO 8601 nor epoch seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def read_rows(source: TextIO, name: str, device: DeviceConfig, time_column: str | None,
              required: Mapping[str, str] | None = None) -> Iterator[Row]:
    """The CSV's rows, checked against the device's tags; `required`: tag -> why the
    replay cannot do without its column."""
    reader = csv.reader(source)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ReplayError(f"{name}: empty file (expected a header line)") from None
    tags = [t.name for t in device.tags]
    if time_column is not None and time_column not in header:
        raise ReplayError(f"{name}: no time column {time_column!r} (the header has: "
                          f"{', '.join(header)})")
    columns = [h for h in header if h != time_column]
    unknown = [c for c in columns if c not in tags]
    if unknown:
        raise ReplayError(f"{name}: column(s) {', '.join(unknown)} are not tags of device "
                          f"{device.name!r} (its tags: {', '.join(tags)})"
                          + ("" if time_column else "; give --time-column for a time column"))
    if not columns:
        raise ReplayError(f"{name}: no tag columns (the tags of {device.name!r}: {', '.join(tags)})")
    for tag, why in (required or {}).items():
        if tag not in columns:
            raise ReplayError(f"{name}: no column {tag!r}: {why}")
    step_ns = round(device.poll_interval_s * 1e9)
    last_ns: int | None = None
    for number, cells in enumerate(reader, start=2):
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise ReplayError(f"{name}:{number}: {len(cells)} cells, the header has {len(header)}")
        row = dict(zip(header, cells, strict=True))
        if time_column is not None:
            try:
                time_ns = parse_time(row[time_column])
            except ValueError as exc:
                raise ReplayError(f"{name}:{number}: {time_column}: {exc}") from None
        else:
            time_ns = REPLAY_START_NS if last_ns is None else last_ns + step_ns
        if last_ns is not None and time_ns < last_ns:
            raise ReplayError(f"{name}:{number}: time goes backwards")
        last_ns = time_ns
        values: dict[str, float | None] = {}
        for column in columns:
            text = row[column].strip()
            try:
                values[column] = float(text) if text else None
            except ValueError:
                raise ReplayError(f"{name}:{number}: {column}: {text!r} is not a number") from None
        yield Row(time_ns, values)


def _batch(device: str, row: Row, start_ns: int) -> SampleBatch:
    present = [(tag, value) for tag, value in row.values.items() if value is not None]
    values = np.array([v for _, v in present], dtype=np.float64)
    bad = ~np.isfinite(values)  # NaN or inf in a recording: a bad reading, never a statistic
    quality = np.where(bad, Quality.BAD, Quality.GOOD).astype(np.uint8)
    return SampleBatch(device, tuple(tag for tag, _ in present), values, quality,
                       row.time_ns, row.time_ns - start_ns)


def replay(detector: Detector, device: str, rows: Iterator[Row], emit: Callable[[Event], None],
           scores_out: Callable[[int, Mapping[str, float]], None] | None = None) -> int:
    """Feed every row to `detector` as one batch, then flush; return the number of rows."""
    scores = getattr(detector, "scores", None)
    start_ns: int | None = None
    last_ns = REPLAY_START_NS
    count = 0
    for row in rows:
        start_ns = row.time_ns if start_ns is None else start_ns
        for event in detector.on_batch(_batch(device, row, start_ns)):
            emit(event)
        if scores_out is not None and callable(scores):
            scores_out(row.time_ns, scores())
        last_ns = row.time_ns
        count += 1
    for event in detector.flush(last_ns):
        emit(event)
    return count


def state_signals(config: AgentConfig, device: str) -> dict[str, str]:
    """The signal tags of the machines the device's `while_states` rules read: without
    them in the recording those rules would see nothing (tag -> why, for the message)."""
    machines = config.machines_of(device)
    needed: dict[str, str] = {}
    for name, rule in config.rules_of(device):
        gate = rule.gate(config.sole_machine_of(device))
        if gate is None:
            continue
        machine = next(m for m in machines if m.name == gate.machine)
        needed.setdefault(machine.signal_tag, (
            f"rule {name!r} runs only while machine {machine.name!r} is in "
            f"{', '.join(gate.states)} (while_states), which its tag {machine.signal_tag!r} tells; "
            "record that tag too, or remove while_states from a copy of the configuration "
            "to replay the rule through every state"))
    return needed


def choose_device(config: AgentConfig, name: str | None) -> DeviceConfig:
    if name is None:
        if len(config.devices) == 1:
            return config.devices[0]
        raise ReplayError(f"the configuration has {len(config.devices)} devices: give --device "
                          f"(one of {', '.join(d.name for d in config.devices)})")
    for device in config.devices:
        if device.name == name:
            return device
    raise ReplayError(f"no device {name!r} in the configuration (devices: "
                      f"{', '.join(d.name for d in config.devices)})")


def run_replay(config: AgentConfig, csv_path: Path, *, device_name: str | None,
               time_column: str | None, scores_path: Path | None, out: TextIO) -> int:
    """The `edge-agent replay` command's work; returns the number of events printed."""
    device = choose_device(config, device_name)
    printed = 0

    def emit(event: Event) -> None:
        nonlocal printed
        printed += 1
        out.write(format_line(decode(encode(event, gateway=config.gateway.id, seq=printed))) + "\n")

    score_rows: list[tuple[int, Mapping[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="edge-agent-replay-") as state_dir:
        offline = config.model_copy(update={
            "gateway": config.gateway.model_copy(update={"state_dir": Path(state_dir)})})
        detector = make_detector(offline, device)
        with open(csv_path, newline="", encoding="utf-8") as source:
            rows = read_rows(source, str(csv_path), device, time_column,
                             state_signals(config, device.name))
            replay(detector, device.name, rows, emit,
                   (lambda t, s: score_rows.append((t, dict(s)))) if scores_path else None)
        wait_all_saved(REPLAY_SAVE_WAIT_S)  # before the temporary directory goes
    if scores_path is not None:
        write_scores(scores_path, score_rows)
    return printed


def write_scores(path: Path, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None:
    """One line per replayed row: its time (ISO 8601 UTC) and every score column seen."""
    columns: dict[str, None] = {}
    for _, scores in rows:
        columns.update(dict.fromkeys(scores))
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["time", *columns])
        for time_ns, scores in rows:
            stamp = dt.datetime.fromtimestamp(time_ns / 1e9, tz=dt.UTC).isoformat()
            writer.writerow([stamp, *(scores.get(c, "") for c in columns)])
