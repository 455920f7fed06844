"""`python -m eval [--datasets PATH] [--write]`: the detection-quality tables of docs/detection.md.

Prints them (markdown); with --write, replaces the part of docs/detection.md between the
`<!-- eval:begin -->` and `<!-- eval:end -->` markers.
"""

from __future__ import annotations

import argparse
import sys
import time

from eval.datasets import ROOT, datasets_dir
from eval.suite import SKAB_RULE_ALL_TAGS, nab, skab

BEGIN, END = "<!-- eval:begin -->", "<!-- eval:end -->"

PUBLISHED_SKAB = [("Conv-AE", 0.78), ("MSET", 0.78), ("PCA (T² + Q)", 0.76),
                  ("Isolation forest", 0.29)]
PUBLISHED_NAB = [("ARTime", 74.9), ("HTM (Numenta)", 70.1), ("KNN-CAD", 58.0),
                 ("Random cut forest", 51.7), ("Twitter ADVec", 47.1),
                 ("Windowed Gaussian", 39.6)]


def tables(folder: str | None) -> str:
    path = datasets_dir(folder)
    started = time.monotonic()
    lines = ["### SKAB valve1 (16 files, point-wise after the first 400 rows of each)", "",
             "| detector | files | F1 | false-alarm rate | missed-alarm rate |",
             "|---|---|---|---|---|"]
    ours = skab(path)
    all_tags = skab(path, SKAB_RULE_ALL_TAGS)
    for label, result in (("**ours: `pca`, 6 tags (config below)**", ours.total),
                          ("ours: `pca`, all 8 tags", all_tags.total)):
        lines.append(f"| {label} | valve1 (16) | {result.f1:.3f} | "
                     f"{result.false_alarm_rate:.3f} | {result.missed_alarm_rate:.3f} |")
    for name, f1 in PUBLISHED_SKAB:
        lines.append(f"| {name} (published) | all 34 | {f1:.2f} | | |")
    lines += ["", "Per file (ours, 6 tags): " + ", ".join(
        f"{name} {r.f1:.2f}" for name, r in ours.per_file.items()), ""]
    lines += ["### NAB realKnownCause (7 files, standard profile)", "",
              "| file | windows | detected | false positives | NAB score |",
              "|---|---|---|---|---|"]
    results = nab(path)
    for name, r in results.items():
        lines.append(f"| {name} | {r.windows} | {r.detected} | {r.false_positives} | "
                     f"{r.normalized:.1f} |")
    mean = sum(r.normalized for r in results.values()) / len(results)
    lines.append(f"| **mean of the 7 files (ours: `zscore`)** | | | | **{mean:.1f}** |")
    for name, score in PUBLISHED_NAB:
        lines.append(f"| {name} (published, 58-file corpus) | | | | {score:.1f} |")
    lines += ["", f"(computed by `python -m eval` in {time.monotonic() - started:.0f} s)"]
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
