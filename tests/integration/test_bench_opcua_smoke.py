"""The OPC UA benchmark runs end to end in its quick mode, so the script cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_opcua_benchmark_reports_agent_beside_baseline(tmp_path: Path) -> None:
    out = tmp_path / "opcua.md"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "opcua" / "run.py"), "--quick",
                          "--output", str(out)], capture_output=True, text=True, check=False,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    report = out.read_text()
    assert "| agent (`OpcUaDriver.stream`) |" in report
    assert "| baseline (bare asyncua handler) |" in report
    agent_rate = report.split("| agent (`OpcUaDriver.stream`) | ")[1].split(" |")[0]
    assert float(agent_rate.replace(",", "")) > 0, "the agent ingested nothing"
