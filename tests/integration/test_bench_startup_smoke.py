"""The start-up benchmark runs end to end (one start of each kind), so the script cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_startup_benchmark_reports_time_to_ready(tmp_path: Path) -> None:
    out = tmp_path / "startup.md"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "startup" / "run.py"), "--runs",
                          "1", "--output", str(out)], capture_output=True, text=True,
                         check=False, timeout=300)
    assert run.returncode == 0, run.stderr
    report = out.read_text()
    for line in ("to READY=1, kernels compiled ahead of time", "numba JIT fallback, warm",
                 "numba JIT fallback, empty", "baseline: `python -c pass`"):
        assert line in report, report
