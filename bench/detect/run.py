"""The detection benchmark: samples per second per core of each anomaly detector, batched
over 1,000 tags, beside the limit of the machine and three baselines, all in one run.

    python bench/detect/run.py            # the full run (about a minute)
    python bench/detect/run.py --quick    # a smoke run with tiny sizes

The limit is a bare single-pass numba loop (an EWMA z-score over one float64 array); the
baselines are the same EWMA z-score in NumPy (vectorized across tags, a loop over time)
and in pure Python, and river's HalfSpaceTrees (learn_one + score_one per sample).
Prints a markdown report (bench/README.md says what each number means). Single-threaded:
the numbers are per core. A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.detect.kernels.source import kernel_cache_dir

# Before numba is imported: as the agent and the tests do, one kernel cache per version of
# the kernels' source. Without it numba caches beside each kernel module, keyed by that
# module alone, and the JIT form could time a kernel compiled against an older episode_step.
os.environ.setdefault("NUMBA_CACHE_DIR", str(kernel_cache_dir(ROOT / ".numba-cache")))

from numba import njit

from agent.config.detection import (
    BandRmsRule,
    DetectorRule,
    DriftRule,
    LimitsRule,
    MsetRule,
    NoveltyRule,
    PcaRule,
    RmsRule,
    StuckRule,
    ZScoreRule,
)
from agent.detect.base import Detector
from agent.detect.kernels import jit
from agent.detect.rules import rule_detectors
from drivers.samples import SampleBatch

DEVICE = "bench"


@dataclass(frozen=True)
class Sizes:
    tags: int
    per_tag: int
    """Samples of each tag in one batch (a burst, or several polls batched)."""
    batches: int
    repeat: int
    python_samples: int
    river_samples: int


FULL = Sizes(tags=1000, per_tag=100, batches=20, repeat=3, python_samples=300_000,
             river_samples=20_000)
QUICK = Sizes(tags=100, per_tag=10, batches=3, repeat=1, python_samples=5_000,
              river_samples=500)


def best_rate(samples: int, run: Callable[[], None], repeat: int) -> float:
    """Samples per second of the fastest of `repeat` runs."""
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return samples / best


# --- the limit: a bare single-pass numba loop ------------------------------------------------

@njit(cache=True)
def bare_ewma_z(x: np.ndarray, alpha: float) -> float:
    """z = (x - mean) / sd against an EWMA mean and variance, counting |z| > 4."""
    mean = x[0]
    var = 0.0
    hits = 0.0
    for i in range(x.shape[0]):
        d = x[i] - mean
        if var > 0.0 and abs(d / math.sqrt(var)) > 4.0:
            hits += 1.0
        mean += alpha * d
        var = (1.0 - alpha) * (var + alpha * d * d)
    return hits


# --- the detectors under test ----------------------------------------------------------------

def signal(tags: int, per_tag: int, batches: int, seed: int = 1) -> np.ndarray:
    """Noise with a rare step, shape (batches, per_tag * tags), tags interleaved in time order."""
    rng = np.random.default_rng(seed)
    x = rng.normal(50.0, 1.0, size=(batches, per_tag, tags))
    steps = rng.random(size=x.shape) < 1e-5
    x += np.cumsum(steps, axis=1) * 8.0
    return x.reshape(batches, per_tag * tags)


BAND_RMS = {"sample_rate_hz": 10240.0, "fft_samples": 1024, "overlap": 0.5,
            "bands": [{"name": "low", "low_hz": 10, "high_hz": 500},
                      {"name": "bearing", "low_hz": 500, "high_hz": 2000},
                      {"name": "high", "low_hz": 2000, "high_hz": 5000}]}
"""A typical vibration rule: 1,024-sample blocks every 512 samples, three bands. A tag's
samples of successive batches continue one stream, so blocks come at the same rate however
the batches cut it."""


def rules(kind: str, tags: list[str]) -> list[DetectorRule]:
    common = {"device": DEVICE, "context_samples": 10}
    if kind == "limits":
        return [LimitsRule(kind="limits", tags=tags, low=40, high=60, hysteresis=1,
                           max_rate_per_s=1e12, min_duration_s=0, **common)]
    if kind == "zscore":
        return [ZScoreRule(kind="zscore", tags=tags, smoothing_halflife_samples=4, **common)]
    if kind == "novelty":
        return [NoveltyRule(kind="novelty", tags=tags, **common)]
    if kind == "drift":
        return [DriftRule(kind="drift", tags=tags, **common)]
    if kind == "stuck":
        return [StuckRule(kind="stuck", tags=tags, **common)]
    if kind == "rms":
        return [RmsRule(kind="rms", tags=tags, max_rms=20, **common)]
    if kind == "band_rms":
        return [BandRmsRule(kind="band_rms", tags=tags, continuous=True, **BAND_RMS, **common)]
    groups = [tags[i:i + 8] for i in range(0, len(tags) - 7, 8)]
    if kind == "mset":
        return [MsetRule(kind="mset", name=f"machine-{i}", tags=g, warmup_samples=200, **common)
                for i, g in enumerate(groups)]
    return [PcaRule(kind="pca", name=f"machine-{i}", tags=g, warmup_samples=200,
                    threshold_factor=1.5, **common)
            for i, g in enumerate(groups)]


def build(kind: str, tags: list[str]) -> Detector:
    (detector,) = rule_detectors(DEVICE, [(r.name or f"{kind}-{i}", r)
                                          for i, r in enumerate(rules(kind, tags))])
    return detector


def detector_rate(kind: str, sizes: Sizes) -> tuple[float, int]:
    """Samples per second through `on_batch`, and the events it produced."""
    tags = [f"t{i}" for i in range(sizes.tags)]
    names = tuple(tags) * sizes.per_tag
    data = signal(sizes.tags, sizes.per_tag, sizes.batches)
    quality = np.zeros(len(names), dtype=np.uint8)
    events = 0
    detector = build(kind, tags)

    def run() -> None:
        nonlocal events
        for b in range(sizes.batches):
            t = (b + 1) * 1_000_000_000
            events += len(detector.on_batch(SampleBatch(DEVICE, names, data[b], quality, t, t)))

    run()  # compile or load every kernel, fill the routing cache, learn (warm-up)
    events = 0
    rate = best_rate(data.size, run, sizes.repeat)
    return rate, events // sizes.repeat


def call_overhead_us(kind: str, tags: int, calls: int) -> float:
    """Microseconds per `on_batch` with one sample of each of `tags` tags."""
    names = [f"t{i}" for i in range(max(tags, 8))][:max(tags, 8)]
    detector = build(kind, names)
    batch_tags = tuple(names[:tags]) if kind not in GROUPED else tuple(names[:8])
    values = np.full(len(batch_tags), 50.0)
    quality = np.zeros(len(batch_tags), dtype=np.uint8)
    batches = [SampleBatch(DEVICE, batch_tags, values, quality, i, i) for i in range(calls + 1)]
    detector.on_batch(batches[0])
    started = time.perf_counter()
    for batch in batches[1:]:
        detector.on_batch(batch)
    return (time.perf_counter() - started) / calls * 1e6


# --- baselines -------------------------------------------------------------------------------

def numpy_ewma_z(x: np.ndarray, alpha: float) -> int:
    """(time, tags): one vector step per sample time across every tag."""
    mean = x[0].copy()
    var = np.zeros_like(mean)
    hits = 0
    for row in x:
        d = row - mean
        hits += int(np.count_nonzero((var > 0) & (d * d > 16.0 * var)))
        mean += alpha * d
        var = (1.0 - alpha) * (var + alpha * d * d)
    return hits


def python_ewma_z(x: list[float], alpha: float) -> int:
    mean, var, hits = x[0], 0.0, 0
    for v in x:
        d = v - mean
        if var > 0.0 and d * d > 16.0 * var:
            hits += 1
        mean += alpha * d
        var = (1.0 - alpha) * (var + alpha * d * d)
    return hits


def river_rate(samples: int) -> float | None:
    try:
        from river.anomaly import HalfSpaceTrees
    except ImportError:
        return None
    rng = np.random.default_rng(2)
    xs = [{"x": float(v)} for v in rng.random(samples)]

    def run() -> None:
        model = HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=1)
        for x in xs:
            model.score_one(x)
            model.learn_one(x)

    return best_rate(samples, run, 1)


# --- the report ------------------------------------------------------------------------------

KINDS = ("limits", "zscore", "novelty", "drift", "stuck", "rms", "pca", "mset", "band_rms")
GROUPED = ("pca", "mset")
"""The multivariate kinds: groups of 8 tags."""


def kernel_form() -> str:
    """How the detectors' kernels ran (agent/detect/kernels/jit.py): `aot` (the extension built by
    `python -m agent.detect.kernels.build`, what the agent runs), else `jit` and why."""
    form = jit.mode()
    return form if form == "aot" else f"{form} ({jit.why_not_aot()})"


def report(sizes: Sizes) -> str:
    n = sizes.tags * sizes.per_tag * sizes.batches
    x = np.random.default_rng(3).normal(size=max(n, 1000))
    bare_ewma_z(x[:10], 0.01)
    bare = best_rate(x.size, lambda: bare_ewma_z(x, 0.01), sizes.repeat)
    lines = [
        "# Detection benchmark", "",
        (f"{platform.machine()}, Python {platform.python_version()}, "
         f"numpy {np.__version__}; {sizes.tags:,} tags, {sizes.per_tag} samples per tag "
         f"per batch, {sizes.batches} batches, best of {sizes.repeat}; one core; "
         f"detector kernels: {kernel_form()}."), "",
        "## Throughput", "",
        "| what | samples/s | vs the bare loop | events |",
        "|---|---:|---:|---:|",
        (f"| bare numba loop: EWMA z-score over one float64 array (the limit) | {bare:,.0f} "
         "| 1.00 | |"),
    ]
    for kind in KINDS:
        rate, events = detector_rate(kind, sizes)
        label = f"`{kind}` detector, {sizes.tags:,} tags in one call"
        if kind in GROUPED:
            label = (f"`{kind}` detector, {sizes.tags // 8} groups of 8 tags (rows/s = "
                     f"samples/s / 8: {rate / 8:,.0f})")
        if kind == "band_rms":
            label = (f"`band_rms` detector, {sizes.tags:,} tags in one call (blocks of "
                     f"{BAND_RMS['fft_samples']} every 512 samples, 3 bands: "
                     f"{rate / 512:,.0f} FFTs/s)")
        lines.append(f"| {label} | {rate:,.0f} | {rate / bare:.2f} | {events} |")
    xt = signal(sizes.tags, sizes.per_tag, 1).reshape(sizes.per_tag, sizes.tags)
    xt = np.tile(xt, (max(1, sizes.batches), 1))
    npy = best_rate(xt.size, lambda: numpy_ewma_z(xt, 0.01), sizes.repeat)
    xs = x[:sizes.python_samples].tolist()
    py = best_rate(len(xs), lambda: python_ewma_z(xs, 0.01), 1)
    lines += [
        (f"| baseline: NumPy EWMA z-score, vectorized over {sizes.tags:,} tags | {npy:,.0f} | "
         f"{npy / bare:.3f} | |"),
        f"| baseline: pure-Python EWMA z-score | {py:,.0f} | {py / bare:.4f} | |",
    ]
    hst = river_rate(sizes.river_samples)
    lines.append("| baseline: river `HalfSpaceTrees` (score_one + learn_one) | "
                 + (f"{hst:,.0f} | {hst / bare:.5f} | |" if hst else "n/a (river not installed) | | |"))
    lines += ["", "## Per-call overhead (a poll that brings one sample per tag)", "",
              "| detector | µs per call, 1 tag | µs per call, 1,000 tags | µs per sample at 1,000 |",
              "|---|---:|---:|---:|"]
    calls = 2000 if sizes is FULL else 50
    for kind in KINDS:
        one = call_overhead_us(kind, 1, calls)
        many = call_overhead_us(kind, 1000, calls // 4)
        lines.append(f"| `{kind}` | {one:.1f} | {many:.1f} | {many / 1000:.3f} |")
    lines.append("")
    lines.append("(`pca` and `mset` calls carry one group of 8 tags: their smallest unit.)")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: a smoke test")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    text = report(QUICK if args.quick else FULL)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
