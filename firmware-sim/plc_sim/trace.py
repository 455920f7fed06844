"""The `--trace` file: one JSON line per model tick with the values as served.

End-to-end tests compare what the agent decoded against this file, so every
line is flushed as soon as it is written (line buffering) and holds the values
exactly as a client decodes them, not the model's unrounded internals.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self


class TraceWriter:
    """Appends JSON lines to a fresh file; the file is truncated on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("w", encoding="utf-8", buffering=1)

    def write(self, record: Mapping[str, object]) -> None:
        """Write one record as a single line; visible to readers immediately."""
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class FaultPeriod:
    """When an injected fault was active, from the trace's ground-truth labels."""

    fault: str
    start_ns: int
    """`time_ns` of the first trace line with the fault."""
    end_ns: int | None
    """`time_ns` of the first line without it again; None when it lasted to the end."""


def fault_periods(records: Iterable[Mapping[str, object]]) -> list[FaultPeriod]:
    """The periods of the trace's `fault` labels, in order (what a detector must report)."""
    periods: list[FaultPeriod] = []
    current: tuple[str, int] | None = None
    for record in records:
        fault, time_ns = record.get("fault"), record["time_ns"]
        assert isinstance(time_ns, int)
        if current is not None and fault != current[0]:
            periods.append(FaultPeriod(current[0], current[1], time_ns))
            current = None
        if current is None and isinstance(fault, str):
            current = (fault, time_ns)
    if current is not None:
        periods.append(FaultPeriod(current[0], current[1], None))
    return periods
