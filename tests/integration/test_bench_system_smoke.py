"""The system benchmark runs to its end on a tiny workload (agent only: two Modbus devices and
one OPC UA server), so that it cannot rot unnoticed as the agent changes.

A smoke run only: nothing here looks at a speed or a budget.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_system_benchmark_quick_run_measures_the_agent_on_modbus_and_opcua_and_its_latency(
    tmp_path: Path,
) -> None:
    report = tmp_path / "system.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "system" / "run.py"), "--quick",
         "--output", str(report)],
        capture_output=True, text=True, timeout=90, check=False,
    )
    assert run.returncode == 0, run.stderr
    text = report.read_text()
    assert text in run.stdout, "the report is printed as well as written"
    assert "## smoke: 2 Modbus TCP devices x 10 tags polled every 1 s" in text, text
    assert "1 OPC UA server x 10 monitored items" in text, text
    assert "ThingsBoard IoT Gateway |" not in text, "a quick run never installs nor runs it"
    # The agent read both simulators, and each measure has a number, not n/a.
    for read in (r"Modbus TCP samples read/s \(workload: 20\)",
                 r"OPC UA samples ingested/s \(agent: `window` events' `n`;[^|]*\)"):
        samples = re.search(rf"\| {read} \| (\d+) \|", text)
        assert samples is not None and int(samples[1]) > 0, text
    for measure in ("CPU s per 1,000 samples", "peak RSS, MiB (VmHWM)",
                    "value change -> broker, p50 / p99 ms",
                    "message's own timestamp -> broker, p50 / p99 ms"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {measure} |"))
        assert "n/a" not in row, row
    assert re.search(r"edge-agent messages by kind: .*change \d+", text), text
    # With the broker unreachable, the store's writes beside what it stored.
    stored = re.search(r"\| payload bytes stored \(per s\) \| ([\d,]+) ", text)
    assert stored is not None and int(stored[1].replace(",", "")) > 0, text
    assert re.search(r"\| bytes written per payload byte stored \| \d+\.\d\d \|", text), text
