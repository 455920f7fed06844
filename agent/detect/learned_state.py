"""What the anomaly detectors learned, kept across a restart and a power cut.

A `pca` model of normal operation, a z-score's baseline, a drift rule's learned mean, an
rms rule's learned level: learned again after every restart, they would take whatever the
machine does at that moment for normal. A gateway restarted (a power cut, an update)
while its pump runs with a blocked inlet would learn the blockage, and never report it.

A detector that learns offers `learned()`: each row's learned arrays under a key made of
its rule, tag(s) and every parameter that shapes what it learns (`row_key`); and
`restore(saved)`: it takes back the rows whose key it finds (the same rule, tags and
parameters), and the others learn afresh. `KeepLearned` wraps a device's detectors:
restores at start, and saves (`StateFile`, `<state_dir>/detectors/<device>.json`, written
atomically off the event loop) when a member finished learning something (a `pca` model
fitted), every `SAVE_INTERVAL_S` on the monotonic clock, and at shutdown. A power cut
loses at most that interval of slow baseline updates, never a fitted model.

Not kept: episodes (one in progress at shutdown ends as `ongoing`); what is timed on the
monotonic clock (a stuck rule's last change, a rate limit's last sample), since that clock
restarts with the machine; the samples of an FFT block not yet complete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import structlog

from agent.detect.base import Detector, DetectorChain
from agent.detect.episodes import RowInfo
from agent.detect.state_file import StateFile
from agent.events import Event
from drivers.samples import SampleBatch

log = structlog.get_logger(__name__)

SAVE_INTERVAL_S = 600.0
"""Slow baselines are saved this often (a fitted model at once): a power cut costs at most
ten minutes of their updates."""

F64 = npt.NDArray[np.float64]


def row_key(info: RowInfo, *params: F64) -> str:
    """A row's identity across restarts: its rule, kind and tag(s), and a digest of the
    parameter rows that shape what it learns (the episode columns, timing and context of
    the events, are left out by the caller: changing them keeps what was learned)."""
    digest = hashlib.sha256()
    for p in params:
        digest.update(np.ascontiguousarray(p, dtype=np.float64).tobytes())
    return f"{info.detector}|{info.score_key}|{digest.hexdigest()[:16]}"


def as_list(values: F64) -> list[float]:
    """Float64 values for JSON (Python's JSON round-trips a float exactly, NaN included)."""
    return [float(v) for v in np.ravel(values)]


def rows_learned(keys: Sequence[str], state: F64) -> dict[str, list[float]]:
    """`learned()` of a detector whose whole state row is learned statistics: row r's state
    under keys[r] (an empty `keys`: nothing is kept)."""
    return {key: as_list(state[r]) for r, key in enumerate(keys)}


def restore_rows(keys: Sequence[str], state: F64, saved: Mapping[str, Any]) -> int:
    """`restore()` of such a detector: the rows whose key `saved` holds, with a state row of
    the same width (another layout is another version's: learned again)."""
    restored = 0
    for r, key in enumerate(keys):
        values = saved.get(key)
        if isinstance(values, list) and len(values) == state.shape[1]:
            state[r] = values
            restored += 1
    return restored


@runtime_checkable
class Learner(Protocol):
    def learned(self) -> dict[str, Any]:
        """Each learning row's state, by `row_key`."""
        ...

    def restore(self, saved: Mapping[str, Any]) -> int:
        """Take back the rows found in `saved` (a `learned()` of an earlier run, possibly of
        another configuration); the number of rows restored."""
        ...

    def milestones(self) -> int:
        """How many rows have finished learning (a fitted model): a change is saved at once."""
        ...


class KeepLearned:
    """A device's detectors as one `DetectorChain`, with what their learners learned saved
    and restored (a Detector and ScoringDetector)."""

    def __init__(self, device: str, detectors: Sequence[Detector], store: StateFile,
                 interval_s: float = SAVE_INTERVAL_S) -> None:
        self._chain = DetectorChain(detectors)
        self._learners = [d for d in detectors if isinstance(d, Learner)]
        self._store = store
        self._interval_ns = int(interval_s * 1e9)
        self._saved_mono_ns: int | None = None
        saved = store.load() if self._learners else {}
        if saved:
            rows = sum(learner.restore(saved) for learner in self._learners)
            log.info("detector_state_restored", device=device, rows=rows,
                     saved_rows=len(saved), path=str(store.path))
        self._milestones = self._count()

    def _count(self) -> int:
        return sum(learner.milestones() for learner in self._learners)

    def save(self, mono_ns: int | None = None) -> None:
        """Hand what every learner learned to the writer thread (returns at once)."""
        if not self._learners:
            return
        data: dict[str, Any] = {}
        for learner in self._learners:
            data.update(learner.learned())
        self._store.save(data)
        if mono_ns is not None:
            self._saved_mono_ns = mono_ns

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        events = self._chain.on_batch(batch)
        milestones = self._count()
        if milestones != self._milestones:
            self._milestones = milestones
            self.save(batch.mono_ns)
        return events

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        events = self._chain.on_tick(mono_ns, time_ns)
        if self._saved_mono_ns is None:
            self._saved_mono_ns = mono_ns
        elif mono_ns - self._saved_mono_ns >= self._interval_ns:
            self.save(mono_ns)
        return events

    def flush(self, time_ns: int) -> list[Event]:
        events = self._chain.flush(time_ns)
        self.save()
        return events

    def scores(self) -> Mapping[str, float]:
        return self._chain.scores()
