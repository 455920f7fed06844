"""The Modbus benchmark runs to its end with a tiny device, so that it cannot rot unnoticed.

A smoke run only: nothing here looks at a speed. The run itself refuses to time anything
unless the driver decodes exactly the values the server serves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_modbus_benchmark_quick_run_reports_agent_baseline_and_decode(tmp_path: Path) -> None:
    report = tmp_path / "modbus.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "modbus" / "run.py"), "--quick", "--profile", "5",
         "--output", str(report)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 0, run.stderr
    text = report.read_text()
    assert text in run.stdout, "the report is printed as well as written"
    for line in ("# Modbus benchmark", "pymodbus 3.16", "50 tags", "read by 2 requests",
                 "| CPU ms per 1,000 tags per poll |", "| agent: `ModbusDriver.read(plan)`",
                 "| baseline: bare `AsyncModbusTcpClient` loop", "| agent without I/O",
                 "Agent over baseline:"):
        assert line in text, f"{line!r} missing from the report:\n{text}"
    rows = [row for row in text.splitlines() if row.startswith(("| agent", "| baseline"))]
    assert len(rows) == 3 and all(row.count("|") == 8 for row in rows), text
    assert "| 1.00 |" in rows[1], "the baseline's ratio to itself"
    assert "cProfile of `ModbusDriver.read` without I/O" in run.stderr
