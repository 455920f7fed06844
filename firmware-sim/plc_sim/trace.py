"""The `--trace` file: one JSON line per model tick with the values as served.

End-to-end tests compare what the agent decoded against this file, so every
line is flushed as soon as it is written (line buffering) and holds the values
exactly as a client decodes them, not the model's unrounded internals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
