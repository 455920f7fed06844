"""One table of every benchmark's headline numbers: `bench/results/latest.md`.

    python bench/summary.py [--results bench/results] [--output bench/results/latest.md]

`make bench` runs it last. Each row is read from a benchmark's own report (the reports say
how each number was measured; bench/README.md explains them): the agent's number, the
baseline measured in the same run, and their ratio (agent / baseline). A row whose report
or line is missing says so in the table rather than vanishing; tests/unit/test_bench_summary.py
reads the committed reports, so a renamed line is noticed.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Headline:
    benchmark: str
    measure: str
    report: str
    row: str
    """The start of the report's table line (its first cell) holding the agent's number."""
    column: int
    """Which cell after the first."""
    baseline_row: str | None
    """The line of the baseline; None: the same line, in `baseline_column`."""
    baseline_column: int
    baseline: str
    """What the baseline is, in words."""


HEADLINES = (
    Headline("system (issue 8)", "CPU, % of one core: reference workload (budget 5)", "system.md",
             "CPU, % of one core", 1, None, 2, "ThingsBoard IoT Gateway"),
    Headline("system (issue 8)", "CPU s per 1,000 samples: reference workload", "system.md",
             "CPU s per 1,000 samples", 1, None, 2, "ThingsBoard IoT Gateway"),
    Headline("system (issue 8)", "peak RSS, MiB: reference workload (budget 143)", "system.md",
             "peak RSS, MiB", 1, None, 2, "ThingsBoard IoT Gateway"),
    Headline("system (issue 8)", "Modbus change -> broker p50 / p99 ms: reference (ratio of "
             "p50)", "system.md",
             "value change -> broker", 1, None, 2, "ThingsBoard IoT Gateway"),
    Headline("store", "events written durably /s", "store.md", "`EventStore`: put", 1,
             "bare SQLite", 1, "bare SQLite loop"),
    Headline("store", "backlog replayed at QoS 1 /s", "store.md", "`MqttUplink`", 1,
             "`mosquitto_pub", 1, "mosquitto_pub -q 1"),
    Headline("startup", "`edge-agent run` to READY=1, s", "startup.md",
             "`edge-agent run` to READY=1, kernels compiled", 1, "baseline: `python -c 'import agent", 1,
             "import agent.supervisor.runtime"),
    Headline("modbus", "CPU ms per poll of 1,000 tags", "modbus.md", "agent: `ModbusDriver.read",
             1, "baseline: bare", 1, "bare pymodbus loop"),
    Headline("opcua", "CPU (cores) per 1,000 items", "opcua.md", "agent (`OpcUaDriver.stream`)",
             2, "baseline (bare asyncua handler)", 2, "bare asyncua handler"),
    Headline("detect", "`novelty` (univariate default) samples/s, 1,000 tags per call",
             "detect.md", "`novelty` detector", 1, "bare numba loop", 1,
             "bare numba loop (the limit)"),
    Headline("detect", "`zscore` samples/s, 1,000 tags per call", "detect.md",
             "`zscore` detector", 1, "bare numba loop", 1, "bare numba loop (the limit)"),
    Headline("detect", "`mset` (multivariate default) samples/s, 125 groups of 8 tags",
             "detect.md", "`mset` detector", 1, "bare numba loop", 1,
             "bare numba loop (the limit)"),
    Headline("detect", "`pca` samples/s, 125 groups of 8 tags", "detect.md", "`pca` detector", 1,
             "bare numba loop", 1, "bare numba loop (the limit)"),
)

_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def _cells(report: str, row: str) -> list[str] | None:
    """The cells of the first table line whose first cell starts with `row`."""
    for line in report.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith(row):
            return cells
    return None


def _number(cell: str) -> float | None:
    match = _NUMBER.search(cell.replace("**", ""))
    return float(match.group().replace(",", "")) if match else None


def line(headline: Headline, results: Path) -> str:
    path = results / headline.report
    if not path.exists():
        return (f"| {headline.benchmark} | {headline.measure} | not run ({headline.report} "
                "missing) | | |")
    text = path.read_text()
    agent = _cells(text, headline.row)
    base = _cells(text, headline.baseline_row) if headline.baseline_row else agent
    if agent is None or base is None:
        return (f"| {headline.benchmark} | {headline.measure} | not found in "
                f"{headline.report} | | |")
    mine, theirs = agent[headline.column], base[headline.baseline_column]
    a, b = _number(mine), _number(theirs)
    ratio = f"{a / b:.2f}" if a is not None and b else "—"
    return (f"| {headline.benchmark} | {headline.measure} | {mine} | {theirs} "
            f"({headline.baseline}) | {ratio} |")


def table(results: Path) -> str:
    lines = ["| benchmark | measure | edge-agent | baseline, same run | ratio (agent / baseline) |",
             "|---|---|---:|---:|---:|"]
    lines += [line(h, results) for h in HEADLINES]
    sources = sorted({h.report for h in HEADLINES})
    return ("# Benchmarks: the headline numbers\n\n" + "\n".join(lines) + "\n\nFrom "
            + ", ".join(f"`{s}`" for s in sources) + " in this folder (each names its "
            "machine and run); bench/README.md says what each number means.\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--output", type=Path, help="also write the table there")
    args = parser.parse_args(argv)
    text = table(args.results)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
