"""The condensation benchmark runs to its end on a few seconds, so that it cannot rot unnoticed.

A smoke run only: nothing here looks at a ratio.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_condense_benchmark_short_run_reports_raw_and_forwarded_bytes(tmp_path: Path) -> None:
    report = tmp_path / "condense.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "condense" / "run.py"), "--seconds", "4",
         "--output", str(report)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr
    text = report.read_text()
    assert text in run.stdout, "the report is printed as well as written"
    for line in ("| baseline: every poll as one `samples` event", "| forwarded: every event",
                 "| of which `window`"):
        assert line in text, f"{line!r} missing from the report:\n{text}"
