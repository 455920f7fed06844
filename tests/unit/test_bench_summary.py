"""bench/summary.py, which `make bench` runs last to write bench/results/latest.md: every
headline it names is found in the committed reports (a renamed line shows up here), and a
missing report or line is said in the table, never dropped."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_summary", ROOT / "bench" / "summary.py")
assert _spec is not None and _spec.loader is not None
summary = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = summary  # dataclasses look their module up while being built
_spec.loader.exec_module(summary)


def test_every_headline_is_found_in_the_committed_reports() -> None:
    text = summary.table(ROOT / "bench" / "results")
    assert "not found" not in text and "not run" not in text, text
    assert text.count("\n| ") == len(summary.HEADLINES) + 1  # the header, then a row each


def test_a_missing_report_or_line_is_said(tmp_path: Path) -> None:
    (tmp_path / "store.md").write_text("| something else | 1 |\n")
    text = summary.table(tmp_path)
    assert "not run (system.md missing)" in text
    assert "not found in store.md" in text


def test_the_ratio_is_agent_over_baseline(tmp_path: Path) -> None:
    (tmp_path / "store.md").write_text(
        "| path | events/s |\n|---|---:|\n| `EventStore`: put, ... | 50,000 |\n"
        "| bare SQLite: ... | 200,000 |\n")
    row = summary.line(summary.HEADLINES[4], tmp_path)
    assert row.endswith("| 0.25 |"), row
