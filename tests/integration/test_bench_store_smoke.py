"""The store benchmark runs to its end with tiny sizes, so that it cannot rot unnoticed.

A smoke run only: nothing here looks at a speed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_store_benchmark_quick_run_reports_every_measure(tmp_path: Path) -> None:
    report = tmp_path / "latest.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "store" / "run.py"), "--quick",
         "--dir", str(tmp_path), "--output", str(report)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stderr
    text = report.read_text()
    assert text in run.stdout, "the report is printed as well as written"
    for line in ("## Durable writes", "| `EventStore`: put", "| bare SQLite",
                 "## Replay of a stored backlog", "| `MqttUplink` reading `EventStore`",
                 "| `mosquitto_pub -l", "## Memory while a backlog drains", "| 5,000 |"):
        assert line in text, f"{line!r} missing from the report:\n{text}"
    assert not list(tmp_path.glob(".store-bench-*")), "the temporary stores are removed"
