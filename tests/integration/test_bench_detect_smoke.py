"""The detection benchmark runs to its end with tiny sizes, so that it cannot rot unnoticed.

A smoke run only: nothing here looks at a speed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_detect_benchmark_quick_run_reports_every_detector_and_baseline(tmp_path: Path) -> None:
    report = tmp_path / "detect.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "detect" / "run.py"), "--quick",
         "--output", str(report)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr
    text = report.read_text()
    assert text in run.stdout, "the report is printed as well as written"
    for line in ("| bare numba loop", "| `limits` detector", "| `zscore` detector",
                 "| `drift` detector", "| `stuck` detector", "| `rms` detector",
                 "| `pca` detector", "| `mset` detector", "| `band_rms` detector",
                 "| baseline: NumPy", "| baseline: pure-Python",
                 "| baseline: river `HalfSpaceTrees`", "## Per-call overhead"):
        assert line in text, f"{line!r} missing from the report:\n{text}"
