"""Reading the labelled datasets of `../shared/datasets/` (their README describes them).

The folder is found from `--datasets`, else `$EDGE_AGENT_DATASETS`, else `<repo>/../shared/datasets`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
ENV = "EDGE_AGENT_DATASETS"
SKAB_COLUMNS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
                "Thermocouple", "Voltage", "Volume Flow RateRMS")


def datasets_dir(given: str | Path | None = None) -> Path:
    if given is not None:
        return Path(given)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return ROOT.parent / "shared" / "datasets"


@dataclass(frozen=True, slots=True)
class Series:
    """One file: UTC nanoseconds per row, values (rows, columns) and, for SKAB, labels."""

    name: str
    time_ns: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    columns: tuple[str, ...]
    labels: npt.NDArray[np.int8] | None = None
    windows: tuple[tuple[int, int], ...] = ()
    """NAB: the anomaly windows as inclusive row ranges."""


def _ns(text: str) -> int:
    stamp = datetime.fromisoformat(text.strip()).replace(tzinfo=UTC)
    return int(stamp.timestamp()) * 1_000_000_000 + stamp.microsecond * 1000


def load_nab(folder: Path, name: str) -> Series:
    lines = (folder / "nab" / name).read_text().splitlines()[1:]
    stamps = np.array([_ns(line.split(",")[0]) for line in lines], dtype=np.int64)
    values = np.array([[float(line.split(",")[1])] for line in lines])
    windows = []
    for start, end in json.loads((folder / "nab" / "windows.json").read_text())[name]:
        first = int(np.searchsorted(stamps, _ns(start)))
        last = int(np.searchsorted(stamps, _ns(end), side="right")) - 1
        windows.append((first, last))
    return Series(name, stamps, values, ("value",), windows=tuple(windows))


def nab_files(folder: Path, category: str | None = None) -> list[str]:
    """The NAB files of the folder, or those of one category (`categories.json`)."""
    names = sorted(json.loads((folder / "nab" / "windows.json").read_text()))
    if category is None:
        return names
    categories = json.loads((folder / "nab" / "categories.json").read_text())
    return [name for name in names if categories.get(name) == category]


def load_skab(path: Path) -> Series:
    lines = path.read_text().splitlines()
    header = lines[0].split(";")
    rows = [line.split(";") for line in lines[1:] if line.strip()]
    cols = [header.index(c) for c in SKAB_COLUMNS]
    values = np.array([[float(r[c]) for c in cols] for r in rows])
    stamps = np.array([_ns(r[0]) for r in rows], dtype=np.int64)
    labels = None
    if "anomaly" in header:
        at = header.index("anomaly")
        labels = np.array([int(float(r[at])) for r in rows], dtype=np.int8)
    return Series(path.name, stamps, values, SKAB_COLUMNS, labels=labels)


def skab_files(folder: Path, sets: Sequence[str] | None = None) -> list[tuple[str, Series]]:
    """Every labelled SKAB file under `skab/<set>/` (or those of `sets`), as `<set>/<file>`,
    in numeric order within a set; `anomaly-free.csv` at the top has no label and is left out."""
    root = folder / "skab"
    chosen = sets or sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    out = []
    for name in chosen:
        paths = sorted((root / name).glob("*.csv"),
                       key=lambda p: (0, int(p.stem)) if p.stem.isdigit() else (1, p.stem))
        out += [(f"{name}/{p.name}", load_skab(p)) for p in paths]
    return out
