"""`python -m eval [--datasets PATH] [--json | --write]`: the shipped defaults on labelled data.

Scores the univariate default on every NAB file (pooled, NAB's three profiles), the
multivariate default on every SKAB set, and `band_rms` on the CWRU bearings, as
`eval.suite` and `eval.cwru` define them: no selection, no tuning, nothing read from the
labels. Prints markdown tables; --json one JSON document (for data of your own laid out like
`../shared/datasets`); --write replaces docs/detection.md between the eval markers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from eval.datasets import ROOT, datasets_dir, nab_files, skab_files
from eval.scoring import NabResult, PointResult
from eval.suite import (
    NabReport,
    SkabReport,
    multivariate_default,
    nab,
    pca_rule,
    skab,
    skab_flag_all,
    skab_reference,
)

BEGIN, END = "<!-- eval:begin -->", "<!-- eval:end -->"

PUBLISHED_NAB = [("ARTime", ("74.9", "65.1", "80.4")),
                 ("Numenta HTM", ("70.5-69.7", "62.6-61.7", "75.2-74.2")),
                 ("CAD OSE", ("69.9", "67.0", "73.2")), ("earthgecko Skyline", ("58.2", "", "")),
                 ("KNN-CAD", ("58.0", "", "")), ("Relative Entropy", ("54.6", "", "")),
                 ("Random Cut Forest", ("51.7", "", "")), ("Twitter ADVec", ("47.1", "", "")),
                 ("Windowed Gaussian", ("39.6", "20.9", "47.4")), ("Etsy Skyline", ("35.7", "", "")),
                 ("Bayesian changepoint", ("17.7", "", "")), ("random", ("11.0", "", ""))]
"""NAB's scoreboard (full 58-file corpus; standard, reward low FP, reward low FN); each
detector's threshold chosen per profile by NAB's optimizer on the corpus's labels."""
PUBLISHED_SKAB = [("Conv-AE", 0.78, 13.55, 28.02), ("MSET", 0.78, 39.73, 14.13),
                  ("T² + Q (PCA)", 0.76, 26.62, 24.92), ("LSTM-AE", 0.74, 29.96, 25.92),
                  ("Isolation forest", 0.29, 2.56, 82.89)]
"""SKAB's leaderboard (all 34 files): F1, FAR %, MAR %."""


def _point(result: PointResult) -> dict[str, Any]:
    return {"f1": result.f1, "far": result.false_alarm_rate, "mar": result.missed_alarm_rate,
            "tp": result.tp, "fp": result.fp, "fn": result.fn, "tn": result.tn}


def _nab_file(by_profile: dict[str, NabResult]) -> dict[str, Any]:
    first = by_profile["standard"]
    return {"windows": first.windows, "detected": first.detected,
            "false_positives": first.false_positives,
            **{f"raw_{profile}": r.raw for profile, r in by_profile.items()}}


def _cwru(folder: Path) -> dict[str, Any] | None:
    from eval import cwru

    return cwru.cwru(folder) if cwru.has_cwru(folder) else None


def document(folder: Path) -> dict[str, Any]:
    """Every benchmark found under `folder`, scored with the shipped defaults."""
    out: dict[str, Any] = {}
    if (folder / "nab" / "windows.json").is_file() and nab_files(folder):
        report = nab(folder)
        out["nab"] = {**report.scores,
                      "files": {n: _nab_file(f) for n, f in report.files.items()}}
    if skab_files(folder):
        result = skab(folder, multivariate_default)
        out["skab"] = {**_point(result.total),
                       "sets": {s: _point(r) for s, r in result.sets.items()},
                       "files": {n: _point(r) for n, r in result.files.items()}}
    vibration = _cwru(folder)
    if vibration is not None:
        out["cwru"] = vibration
    return out


def _nab_tables(report: NabReport) -> list[str]:
    s = report.scores
    files = report.files.values()
    windows = sum(f["standard"].windows for f in files)
    found = sum(f["standard"].detected for f in files)
    false = sum(f["standard"].false_positives for f in files)
    lines = [f"### NAB ({len(report.files)} files, {windows} windows; pooled normalization)", "",
             "| detector | standard | reward low FP | reward low FN |", "|---|---|---|---|",
             ("| **ours: `novelty` default, one threshold for all profiles** | "
              f"**{s['standard']:.1f}** | **{s['reward_low_fp']:.1f}** | "
              f"**{s['reward_low_fn']:.1f}** |")]
    lines += [f"| {name} (published, 58 files, a threshold per profile) | {a} | {b} | {c} |"
              for name, (a, b, c) in PUBLISHED_NAB]
    lines += ["", f"Windows detected: {found} of {windows}; false positives: {false}.", "",
              "| file | windows | detected | false positives | raw (standard) |",
              "|---|---|---|---|---|"]
    lines += [f"| {name} | {f['standard'].windows} | {f['standard'].detected} | "
              f"{f['standard'].false_positives} | {f['standard'].raw:.2f} |"
              for name, f in report.files.items()]
    return lines


def _skab_line(label: str, result: PointResult) -> str:
    return (f"| {label} | {result.f1:.3f} | {100 * result.false_alarm_rate:.1f} | "
            f"{100 * result.missed_alarm_rate:.1f} |")


def _skab_tables(folder: Path, ours: SkabReport) -> list[str]:
    reference = skab(folder, skab_reference)
    lines = [f"### SKAB ({len(ours.files)} files: " + ", ".join(
                 f"{s} {sum(1 for n in ours.files if n.startswith(s + '/'))}"
                 for s in ours.sets) + "; point-wise after each file's first 400 rows, pooled)",
             "", "| detector | F1 | FAR % | MAR % |", "|---|---|---|---|",
             _skab_line("**ours: `mset` default (memory of normal rows, SPRT of the residuals)**",
                        ours.total)]
    lines += [_skab_line(f"ours on {name}", r) for name, r in ours.sets.items()]
    lines += [_skab_line("ours: `pca` rule (T² and Q, 99.9 % limits), the former default",
                         skab(folder, pca_rule).total),
              _skab_line("T² + Q reference, re-implemented here (harness check)",
                         reference.total),
              _skab_line("every scored row flagged", skab_flag_all(folder))]
    lines += [f"| {name} (published, all 34 files) | {f1:.2f} | {far:.1f} | {mar:.1f} |"
              for name, f1, far, mar in PUBLISHED_SKAB]
    lines += ["", "Per file (ours, F1): " + ", ".join(
        f"{name} {r.f1:.2f}" for name, r in ours.files.items())]
    return lines


def _cwru_tables(result: dict[str, Any]) -> list[str]:
    title = ("### CWRU bearings (`band_rms` bearing default learned on the first half of the "
             "normal file; the normal row is its second half)")
    header = ("| file | alarms | first alarm (s of signal) | band that moved | bands that alarmed "
              "| highest band level / learned (band) |")
    lines = [title, "", header, "|---|---|---|---|---|---|"]
    for name, r in result.items():
        first = "none" if r["first_alarm_s"] is None else f"{r['first_alarm_s']:.2f}"
        lines.append(f"| {name} | {r['alarms']} | {first} | {r.get('band') or ''} | "
                     f"{', '.join(r.get('alarm_bands', []))} | "
                     f"{r['peak_ratio']:.2f} ({r['peak_band']}) |")
    return lines


def tables(folder: Path) -> str:
    started = time.monotonic()
    lines: list[str] = []
    if (folder / "nab" / "windows.json").is_file():
        lines += _nab_tables(nab(folder)) + [""]
    if skab_files(folder):
        lines += _skab_tables(folder, skab(folder, multivariate_default)) + [""]
    vibration = _cwru(folder)
    if vibration is not None:
        lines += _cwru_tables(vibration) + [""]
    lines.append(f"(scored by `python -m eval` in {time.monotonic() - started:.0f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__)
    parser.add_argument("--datasets", help="the datasets folder (default: $EDGE_AGENT_DATASETS "
                        "or <repo>/../shared/datasets)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print one JSON document")
    mode.add_argument("--write", action="store_true", help="update docs/detection.md")
    args = parser.parse_args(argv)
    folder = datasets_dir(args.datasets)
    if not folder.is_dir():
        print(f"{folder}: no such folder (give --datasets PATH)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(document(folder), indent=1))
        return 0
    text = tables(folder)
    print(text)
    if args.write:
        doc = ROOT / "docs" / "detection.md"
        content = doc.read_text()
        if BEGIN not in content or END not in content:
            print(f"{doc}: markers {BEGIN} / {END} not found", file=sys.stderr)
            return 1
        head, rest = content.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
