"""Merged windows carry exactly the statistics of the samples of both."""

from __future__ import annotations

import numpy as np
import pytest

from agent.store.compaction import merge_windows


def window(samples: np.ndarray, start: int, end: int) -> dict[str, object]:
    return {"start_ns": start, "end_ns": end, "tags": {"p": {
        "n": len(samples), "bad": 1, "unit": "W", "min": float(samples.min()),
        "max": float(samples.max()), "mean": float(samples.mean()),
        "std": float(samples.std()), "last": float(samples[-1])}}}


def test_merge_equals_statistics_of_the_union() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(5000, 40, 37), rng.normal(5100, 90, 61)
    merged = merge_windows(window(a, 0, 10), window(b, 10, 20))
    both = np.concatenate([a, b])
    s = merged["tags"]["p"]
    assert (merged["start_ns"], merged["end_ns"], merged["windows"]) == (0, 20, 2)
    assert s["n"] == 98 and s["bad"] == 2 and s["last"] == b[-1]
    assert s["min"] == both.min() and s["max"] == both.max()
    assert s["mean"] == pytest.approx(both.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(both.std(), rel=1e-9)


def test_merging_merged_windows_counts_all_originals() -> None:
    one = window(np.array([1.0]), 0, 1)
    twice = merge_windows(merge_windows(one, one), merge_windows(one, one))
    assert twice["windows"] == 4 and twice["tags"]["p"]["n"] == 4


def test_tags_present_in_one_window_only_are_kept() -> None:
    a = window(np.array([1.0, 2.0]), 0, 1)
    b = {"start_ns": 1, "end_ns": 2, "tags": {"q": {"n": 0, "bad": 3, "unit": ""}}}
    merged = merge_windows(a, b)
    assert merged["tags"]["p"]["n"] == 2 and merged["tags"]["q"] == {"n": 0, "bad": 3, "unit": ""}


def test_counter_increases_and_resets_add_up() -> None:
    a = {"start_ns": 0, "end_ns": 1, "tags": {"e": {"n": 2, "bad": 0, "min": 1.0, "max": 2.0,
                                                    "mean": 1.5, "std": 0.5, "last": 2.0,
                                                    "increase": 1.0, "resets": 0}}}
    b = {"start_ns": 1, "end_ns": 2, "tags": {"e": {"n": 1, "bad": 1, "min": 0.5, "max": 0.5,
                                                    "mean": 0.5, "std": 0.0, "last": 0.5,
                                                    "increase": 0.5, "resets": 1}}}
    merged = merge_windows(a, b)["tags"]["e"]
    assert merged["increase"] == 1.5 and merged["resets"] == 1
