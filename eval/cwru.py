"""CWRU bearings: the `band_rms` bearing default (`eval.suite`) by the dataset's protocol.

The rule learns on the first half of the healthy run; what it learned is restored, as the
agent does at a restart, into fresh detectors for each scored signal: the healthy run's
second half (must raise nothing) and each fault file (must be flagged, the sooner the
better). A signal is a 48 kHz stream of the drive-end accelerometer (g), fed in batches
of 1,024 samples; a second of signal is counted from the scored signal's first sample.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.config.detection import BandRmsRule
from agent.detect.base import DetectorChain
from agent.detect.kernels.band import BS_BASE
from agent.detect.learned_state import Learner
from agent.detect.rules import rule_detectors
from drivers.samples import SampleBatch
from eval.harness import DEVICE
from eval.suite import BEARING_FFT_SAMPLES, bearing_default

SAMPLE_RATE_HZ = 48_000.0
NORMAL = "Normal_Normal_0.mat"
FAULTS = ("48k_DE_B007_0.mat", "48k_DE_IR007_0.mat", "48k_DE_IR021_0.mat")
BATCH = 1024
TAG = "de_accel_g"
T0_NS = 1_700_000_000_000_000_000

F64 = npt.NDArray[np.float64]


def has_cwru(folder: Path) -> bool:
    return (folder / "cwru" / NORMAL).is_file()


def drive_end(path: Path) -> F64:
    """The drive-end acceleration of a CWRU file (`X<nnn>_DE_time`), in g."""
    from scipy.io import loadmat

    mat = loadmat(path)
    (key,) = [k for k in mat if k.endswith("_DE_time")]
    return np.ascontiguousarray(mat[key].ravel(), dtype=np.float64)


def _chain(rule: BandRmsRule) -> DetectorChain:
    return DetectorChain(rule_detectors(DEVICE, [("bearing", rule)]))


def _learners(chain: DetectorChain) -> list[Learner]:
    return [d for d in chain.members if isinstance(d, Learner)]


def _stream(chain: DetectorChain, signal: F64) -> tuple[list[tuple[int, str]], dict[str, float]]:
    """Feed a signal: each episode start (samples fed when it came out, its band) and each
    band's highest score."""
    tags = (TAG,) * BATCH
    quality = np.zeros(BATCH, dtype=np.uint8)
    starts: list[tuple[int, str]] = []
    peak: dict[str, float] = {}
    for end in range(BATCH, len(signal) + 1, BATCH):
        t = T0_NS + round(end * 1e9 / SAMPLE_RATE_HZ)
        batch = SampleBatch(DEVICE, tags, signal[end - BATCH:end], quality, t, t - T0_NS)
        starts += [(end, str(e.data["band"])) for e in chain.on_batch(batch)
                   if e.data.get("phase") == "start"]
        for key, score in chain.scores().items():
            if not math.isnan(score):  # NaN until learned
                peak[key] = max(peak.get(key, 0.0), score)
    return starts, peak


def cwru(folder: Path) -> dict[str, Any]:
    """Per file: `alarms` (episode starts), `first_alarm_s` (seconds of its signal to the
    first, None: none), `band` (the first's), `alarm_bands`, `peak_ratio` (the highest band
    level over its learned level) and `peak_band`; the healthy file stands for its 2nd half."""
    normal = drive_end(folder / "cwru" / NORMAL)
    half = len(normal) // 2
    blocks = (half - BEARING_FFT_SAMPLES) // (BEARING_FFT_SAMPLES // 2) + 1  # overlap 0.5
    rule = bearing_default(TAG, SAMPLE_RATE_HZ, blocks)
    learning = _chain(rule)
    _stream(learning, normal[:half])
    saved = {k: v for d in _learners(learning) for k, v in d.learned().items()}
    base = {k.split("|")[1]: v[BS_BASE] for k, v in saved.items()}
    out: dict[str, Any] = {}
    for name in (NORMAL, *FAULTS):
        path = folder / "cwru" / name
        if not path.is_file():
            continue
        signal = normal[half:] if name == NORMAL else drive_end(path)
        chain = _chain(rule)
        for d in _learners(chain):
            d.restore(saved)
        starts, peak = _stream(chain, signal)
        ratios = {key.rsplit(":", 1)[1]: level / base[key] for key, level in peak.items()}
        top = max(ratios, key=lambda band: ratios[band])
        out[name] = {"alarms": len(starts),
                     "first_alarm_s": starts[0][0] / SAMPLE_RATE_HZ if starts else None,
                     "band": starts[0][1] if starts else None,
                     "alarm_bands": list(dict.fromkeys(band for _, band in starts)),
                     "signal_s": len(signal) / SAMPLE_RATE_HZ,
                     "peak_ratio": ratios[top], "peak_band": top}
    return out
