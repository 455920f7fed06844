"""Merging window aggregates: how a full store keeps old data coarser instead of dropping it.

Two `window` events of one device merge into one spanning both, with exact
counts, extremes and mean, and the pooled variance (Chan, Golub & LeVeque,
"Algorithms for computing the sample variance", 1983). `windows` in the result
says how many original windows it stands for, so the cloud knows it is coarser.
"""

from __future__ import annotations

import math
from typing import Any


def merge_tag_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Statistics of one tag over two consecutive windows, `a` the earlier."""
    na, nb = int(a.get("n", 0)), int(b.get("n", 0))
    merged: dict[str, Any] = {
        "n": na + nb,
        "bad": int(a.get("bad", 0)) + int(b.get("bad", 0)),
        "unit": b.get("unit", a.get("unit", "")),
    }
    if "increase" in a or "increase" in b:  # a counter tag: increases and resets add up
        merged["increase"] = float(a.get("increase", 0.0)) + float(b.get("increase", 0.0))
        merged["resets"] = int(a.get("resets", 0)) + int(b.get("resets", 0))
    if na == 0 or nb == 0:
        source = b if nb else a
        merged.update({k: source[k] for k in ("min", "max", "mean", "std", "last") if k in source})
        return merged
    n = na + nb
    delta = b["mean"] - a["mean"]
    m2 = a["std"] ** 2 * na + b["std"] ** 2 * nb + delta * delta * na * nb / n
    merged.update(
        min=min(a["min"], b["min"]),
        max=max(a["max"], b["max"]),
        mean=a["mean"] + delta * nb / n,
        std=math.sqrt(max(m2, 0.0) / n),
        last=b["last"],
    )
    return merged


def merge_windows(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The data of one window event standing for `a` followed by `b`."""
    tags: dict[str, Any] = {}
    for name in dict.fromkeys([*a.get("tags", {}), *b.get("tags", {})]):
        ta, tb = a.get("tags", {}).get(name), b.get("tags", {}).get(name)
        tags[name] = merge_tag_stats(ta, tb) if ta and tb else dict(ta or tb)
    return {
        "start_ns": min(a["start_ns"], b["start_ns"]),
        "end_ns": max(a["end_ns"], b["end_ns"]),
        "tags": tags,
        "windows": int(a.get("windows", 1)) + int(b.get("windows", 1)),
    }
