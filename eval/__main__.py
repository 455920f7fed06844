"""`python -m eval [--datasets PATH] [--write]`: the detection-quality tables of docs/detection.md.

Runs the label-free selection of each configuration (`eval.select`), then scores it.

Prints them (markdown); with --write, replaces the part of docs/detection.md between the
`<!-- eval:begin -->` and `<!-- eval:end -->` markers.
"""

from __future__ import annotations

import argparse
import sys
import time

from eval.datasets import ROOT, datasets_dir
from eval.scoring import PointResult
from eval.select import (
    NAB_ALARMING_FILES,
    nab_rule,
    skab_rule,
    skab_rule_leading,
    skab_rule_limits,
    skab_rule_mewma,
    skab_rule_mewma_calibrated,
    skab_rule_steady,
    step_design,
)
from eval.suite import ORACLE_NAB_RULE, ORACLE_SKAB_RULE, nab, skab

BEGIN, END = "<!-- eval:begin -->", "<!-- eval:end -->"

PUBLISHED_SKAB = [("Conv-AE", 0.78), ("MSET", 0.78), ("PCA (T² + Q)", 0.76),
                  ("Isolation forest", 0.29)]
PUBLISHED_NAB = [("ARTime", 74.9), ("HTM (Numenta)", 70.1), ("KNN-CAD", 58.0),
                 ("Random cut forest", 51.7), ("Twitter ADVec", 47.1),
                 ("Windowed Gaussian", 39.6)]


def _skab_line(label: str, result: PointResult) -> str:
    return (f"| {label} | valve1 (16) | {result.f1:.3f} | {result.false_alarm_rate:.3f} | "
            f"{result.missed_alarm_rate:.3f} |")


def _weight(halflife: float) -> float:
    return round(1.0 - 0.5 ** (1.0 / halflife), 3) if halflife > 0 else 1.0


def tables(folder: str | None) -> str:
    path = datasets_dir(folder)
    started = time.monotonic()
    lines = ["### SKAB valve1 (16 files, point-wise after the first 400 rows of each)", ""]
    leading = "the leading 400 rows of each valve1 file"
    variants = (("A", "`anomaly-free.csv`", skab_rule(path)),
                ("B", leading, skab_rule_leading(path)),
                ("C", leading, skab_rule_steady(path)),
                ("D", leading, skab_rule_limits(path)))
    for letter, source, chosen in variants:
        rule = chosen.rule
        why, how = (("trend over the learning rows", "{:.1f} sd") if chosen.by_trend
                    else ("share of normal rows over 3 sigma", "{:.0%}"))
        lines += [f"{letter}: selected by `eval/select.py` from {source} only (no label): "
                  "tags " + ", ".join(f"`{t}`" for t in rule.tags) + f"; dropped ({why}): "
                  + (", ".join(f"`{t}` " + how.format(s) for t, s in chosen.dropped.items())
                     or "none")
                  + f"; smoothing half-life {rule.smoothing_halflife_samples:g} rows, "
                  + (f"threshold factor {rule.threshold_factor:g} (1 % false alarms on those "
                     "normal rows; factor per smoothing: " + ", ".join(
                         f"{h:g}: {f:.2f}" for h, f in chosen.factors.items()) + ")."
                     if rule.confidence is None else
                     f"control limits at confidence {rule.confidence:g}, explained variance "
                     f"{rule.explained_variance:g} (SKAB's T² + Q reference settings, not "
                     "calibrated here)."), ""]
    design = step_design(path, variants[-1][2])  # D's choice, not made again
    mewma = skab_rule_mewma(path, design)
    lines += ["E: selected by `eval/select.py` from " + leading + " only (no label): D's tags "
              "and limits, the rows smoothed by an EWMA of weight "
              f"{_weight(mewma.rule.input_smoothing_halflife_samples):g} (half-life "
              f"{mewma.rule.input_smoothing_halflife_samples:.1f} rows) before T² and Q, the "
              "weight with the best F1 on 1-sd steps added to the judged leading rows (weight: "
              "F1, stepped rows flagged, normal rows flagged: " + "; ".join(
                  f"{w:g}: {f:.2f}, {hit:.2f}, {false:.2f}"
                  for w, (f, hit, false) in mewma.f1.items()) + ").", ""]
    calibrated = skab_rule_mewma_calibrated(path, design)  # E's traces, not made again
    lines += ["F: selected by `eval/select.py` from " + leading + " only (no label): D's tags "
              "and limits, E's weights compared at one false-alarm rate: for each, the factor "
              "with 1 % of the untouched judged rows over it, then the share of the 1-sd "
              "stepped rows over that factor; the best is weight "
              f"{_weight(calibrated.rule.input_smoothing_halflife_samples):g} at factor "
              f"{calibrated.rule.threshold_factor:g} (weight: factor, stepped rows flagged: "
              + "; ".join(f"{w:g}: {f:.2f}, {hit:.3f}"
                          for w, (f, hit) in calibrated.design.items()) + ").", ""]
    rules = [(letter, chosen.rule) for letter, _, chosen in variants]
    rules += [("E", mewma.rule), ("F", calibrated.rule)]
    lines += ["| detector | files | F1 | false-alarm rate | missed-alarm rate |",
              "|---|---|---|---|---|"]
    scored = [(letter, skab(path, rule)) for letter, rule in rules]
    notes = {"A": "rule written first", "B": "rule written after A's score",
             "C": "rule written after A's and B's scores",
             "D": "rule written after A's, B's and C's scores",
             "E": "rule written after A's to D's scores and E's own F1 at each weight",
             "F": "rule written after A's to E's scores"}
    for letter, result in scored:
        lines.append(_skab_line(f"**ours, {letter}: `pca` selected without labels "
                                f"({notes[letter]})**", result.total))
    for name, f1 in PUBLISHED_SKAB:
        lines.append(f"| {name} (published) | all 34 | {f1:.2f} | | |")
    lines.append(_skab_line("*oracle (tuned on the test labels, not admissible)*",
                            skab(path, ORACLE_SKAB_RULE).total))
    for letter, result in scored:
        lines += ["", f"Per file (ours, {letter}): " + ", ".join(
            f"{name} {r.f1:.2f}" for name, r in result.per_file.items())]
    lines.append("")
    nab_choice = nab_rule(path)
    z = nab_choice.rule
    lines += ["### NAB realKnownCause (7 files, standard profile)", "",
              "Selected by `eval/select.py` from the probationary periods only (no window): "
              f"smoothing half-life {z.smoothing_halflife_samples:g} samples, baseline "
              f"half-life {z.baseline_halflife_samples:g}, warm-up {z.warmup_samples} "
              "(fixed in advance); threshold "
              f"{z.threshold_z:g}, the lowest with which at most {NAB_ALARMING_FILES} file "
              "alarms in its probationary period (files alarming there at the thresholds "
              "tried: " + "; ".join(f"{t:g}: {len(names)}" for t, names
                                     in nab_choice.alarming.items()) + ").", "",
              "| file | windows | detected | false positives | NAB score |",
              "|---|---|---|---|---|"]
    results = nab(path, z)
    for name, r in results.items():
        lines.append(f"| {name} | {r.windows} | {r.detected} | {r.false_positives} | "
                     f"{r.normalized:.1f} |")
    mean = sum(r.normalized for r in results.values()) / len(results)
    lines.append(f"| **mean of the 7 files (ours: `zscore`, selected without labels)** "
                 f"| | | | **{mean:.1f}** |")
    for name, score in PUBLISHED_NAB:
        lines.append(f"| {name} (published, 58-file corpus) | | | | {score:.1f} |")
    oracle = nab(path, ORACLE_NAB_RULE)
    machine = oracle["machine_temperature_system_failure.csv"]
    oracle_mean = sum(r.normalized for r in oracle.values()) / len(oracle)
    lines.append(f"| *oracle (tuned on the test labels, not admissible): mean; "
                 f"machine_temperature {machine.detected}/{machine.windows} windows, "
                 f"{machine.false_positives} FP, {machine.normalized:.1f}* | | | | "
                 f"{oracle_mean:.1f} |")
    took = time.monotonic() - started
    lines += ["", f"(selection and scoring by `python -m eval` in {took:.0f} s)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__)
    parser.add_argument("--datasets", help="the datasets folder (default: $EDGE_AGENT_DATASETS "
                        "or <repo>/../shared/datasets)")
    parser.add_argument("--write", action="store_true", help="update docs/detection.md")
    args = parser.parse_args(argv)
    text = tables(args.datasets)
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
