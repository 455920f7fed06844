"""What the anomaly detectors learned, kept across a restart and a power cut.

Learned afresh at every start, a baseline would take whatever the machine does then for
normal (a pump restarted with a blocked inlet would learn the blockage). A `Learner` gives
`learned()`, each row's arrays under `row_key` (rule, tags and every parameter that shapes
what it learns), and `restore(saved)` takes back the rows whose key it finds. `KeepLearned`
wraps a device's detectors: restores at start, saves (`StateFile`, off the event loop) when
a model is fitted, every `SAVE_INTERVAL_S` and at shutdown, with each row's `learned_at`;
`forget` (`edge-agent relearn`) makes rules learn again. What is not kept and why:
docs/detection.md, "Across restarts".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import structlog

from agent.detect.base import Detector, DetectorChain, Pausable
from agent.detect.episodes import RowInfo
from agent.detect.state_file import StateFile
from agent.events import Event
from drivers.samples import SampleBatch

log = structlog.get_logger(__name__)

SAVE_INTERVAL_S = 600.0
"""Slow baselines are saved this often (a fitted model at once): a power cut costs at most
ten minutes of their updates."""

F64 = npt.NDArray[np.float64]


def state_path(state_dir: Path, device: str) -> Path:
    """Where a device's learned state is kept."""
    return state_dir / "detectors" / f"{device}.json"


def row_key(info: RowInfo, *params: F64) -> str:
    """A row's identity across restarts: its rule, kind and tag(s), and a digest of the
    parameter rows that shape what it learns (the episode columns, timing and context of
    the events, are left out by the caller: changing them keeps what was learned)."""
    digest = hashlib.sha256()
    for p in params:
        digest.update(np.ascontiguousarray(p, dtype=np.float64).tobytes())
    return f"{info.detector}|{info.score_key}|{digest.hexdigest()[:16]}"


def rule_of(key: str, rules: Iterable[str]) -> str | None:
    """Which of a device's rules (their names) a row belongs to: the `score_key` part of its
    `row_key` is the rule's name (a `pca` group) or starts with it and a colon (`rule:tag`,
    `rule:tag:band`). A name may hold a colon itself: the longest name that fits wins."""
    score_key = key.partition("|")[2].rpartition("|")[0]
    fits = [rule for rule in rules if score_key == rule or score_key.startswith(rule + ":")]
    return max(fits, key=len, default=None)


def in_rule_order(keys: Iterable[str], rules: Sequence[str]) -> list[str]:
    """Row keys ordered as their rules are in the configuration (a person reads them so)."""
    order = {rule: i for i, rule in enumerate(rules)}
    return sorted(keys, key=lambda key: (order.get(rule_of(key, rules) or "", len(order)), key))


def describe_row(key: str) -> str:
    """A row for a person: `level:current_a (zscore)`, `agree (pca)`."""
    kind, _, rest = key.partition("|")
    return f"{rest.rpartition('|')[0]} ({kind})"


def utc_text(time_ns: int) -> str:
    """UTC wall-clock time as the state file and the logs write it: `2026-01-05T10:00:00Z`."""
    moment = dt.datetime.fromtimestamp(time_ns / 1e9, tz=dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def utc_ns(text: object) -> int | None:
    """A `utc_text` back in nanoseconds; None for anything else (absent, damaged)."""
    if not isinstance(text, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return round(moment.timestamp()) * 1_000_000_000


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


def rows_finished(keys: Sequence[str], learned_on: F64, warmup: F64) -> dict[str, bool]:
    """`finished()` of a detector whose row r learned on `learned_on[r]` samples (or blocks)
    of the `warmup[r]` it learns on."""
    return {key: bool(learned_on[r] >= warmup[r] > 0) for r, key in enumerate(keys)}


Warmup = tuple[int, int, str]
"""(seen, needed, unit) of a row's warm-up: `12, 30, "samples"`."""


def rows_warmup(keys: Sequence[str], learned_on: F64, warmup: F64, unit: str) -> dict[str, Warmup]:
    """`warmup()` of a detector whose row r learned on `learned_on[r]` of `warmup[r]` units."""
    return {key: (int(min(learned_on[r], warmup[r])), int(warmup[r]), unit)
            for r, key in enumerate(keys)}


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

    def finished(self) -> dict[str, bool]:
        """Every learning row's key, and whether it has learned (its warm-up is over, its
        model fitted)."""
        ...

    def warmup(self) -> dict[str, Warmup]:
        """Every learning row's key, and how far its warm-up has come (`edge-agent status`)."""
        ...


Build = Callable[[], Sequence[Detector]]
"""Makes a device's rule detectors, the same ones each time (`rule_detectors`)."""


class KeepLearned:
    """A device's detectors as one `DetectorChain` (a Detector and ScoringDetector), with what
    their learners learned saved and restored. `rules`: the device's rule names (`rule_of`
    finds a row's rule); `build`: makes the detectors, at start and for those `forget` redoes."""

    def __init__(self, device: str, rules: Sequence[str], build: Build, store: StateFile,
                 interval_s: float = SAVE_INTERVAL_S) -> None:
        self.device = device
        self.rules = tuple(rules)
        self._build = build
        self._detectors = list(build())
        self._chain = DetectorChain(self._detectors)
        self._learners = [d for d in self._detectors if isinstance(d, Learner)]
        self._store = store
        self._interval_ns = int(interval_s * 1e9)
        self._saved_mono_ns: int | None = None
        self._started_ns = time.time_ns()
        self._started: dict[str, int] = {}
        """When a row began learning again (`forget`); the others since the start."""
        self._learned_at: dict[str, int | None] = {}
        """UTC ns at which each row that has learned finished learning; None: restored from a
        file of an earlier version, which did not keep it."""
        self._learning = True
        """Some row may still be learning: `on_tick` looks for the ones that finished."""
        document = store.load_document() if self._learners else {}
        saved = document.get("data")
        if isinstance(saved, dict) and saved:
            self._restore(saved, document)
        self._milestones = self._count()

    def _restore(self, saved: Mapping[str, Any], document: Mapping[str, Any]) -> None:
        rows = sum(learner.restore(saved) for learner in self._learners)
        current = self._finished()
        # Rows of a rule whose tags or parameters changed since (or of a version that kept
        # other parameters): what they learned no longer applies, they learn again.
        stale = [describe_row(key) for key in saved if key not in current]
        times = document.get("learned_at")
        times = times if isinstance(times, dict) else {}
        for key, done in current.items():
            if done:
                self._learned_at[key] = utc_ns(times.get(key))
        known = [t for t in self._learned_at.values() if t is not None]
        # The oldest model is the one that may be stale; unknown if any age is unknown.
        oldest = min(known) if known and len(known) == len(self._learned_at) else None
        log.info("detector_state_restored", device=self.device, rows=rows,
                 saved_rows=len(saved), learning_again=stale, path=str(self._store.path),
                 saved_at=document.get("saved_at"),
                 learned_at=None if oldest is None else utc_text(oldest),
                 learned_age_s=None if oldest is None
                 else round((time.time_ns() - oldest) / 1e9, 1))

    def _count(self) -> int:
        return sum(learner.milestones() for learner in self._learners)

    def _finished(self) -> dict[str, bool]:
        finished: dict[str, bool] = {}
        for learner in self._learners:
            finished.update(learner.finished())
        return finished

    def _stamp(self) -> dict[str, bool]:
        """Note when rows finished learning (a model fitted, a warm-up over); returns
        `_finished()`."""
        now = time.time_ns()
        finished = self._finished()
        for key, done in finished.items():
            if done and key not in self._learned_at:
                self._learned_at[key] = now
        self._learning = not all(finished.values())
        return finished

    def save(self, mono_ns: int | None = None) -> None:
        """Hand what every learner learned to the writer thread (returns at once)."""
        if not self._learners:
            return
        self._stamp()
        data = self._learned()
        learned_at = {key: utc_text(t) for key, t in self._learned_at.items() if t is not None}
        self._store.save(data, {"saved_at": utc_text(time.time_ns()), "learned_at": learned_at})
        if mono_ns is not None:
            self._saved_mono_ns = mono_ns

    def forget(self, rules: Collection[str], time_ns: int) -> tuple[list[Event], list[str]]:
        """Make the named rules learn again, in memory and in the file (saved at once); `time_ns`:
        now, UTC. Returns the events of the episodes it ended and the forgotten rows' keys. A
        detector holding such a row is rebuilt, takes back its other rows, and its episodes in
        progress end `ongoing`."""
        gone = {key for key in self._finished() if rule_of(key, self.rules) in rules}
        if not gone:
            return [], []
        kept = {key: v for key, v in self._learned().items() if key not in gone}
        fresh = self._build()
        events: list[Event] = []
        for i, old in enumerate(self._detectors):
            new = fresh[i]
            if isinstance(old, Learner) and isinstance(new, Learner) \
                    and not gone.isdisjoint(old.finished()):
                events += old.flush(time_ns)
                new.restore(kept)
                self._detectors[i] = new
        self._chain = DetectorChain(self._detectors)
        self._learners = [d for d in self._detectors if isinstance(d, Learner)]
        for key in gone:
            self._learned_at.pop(key, None)
            self._started[key] = time_ns
        self._learning = True
        self._milestones = self._count()
        self.save()
        named = {rule_of(key, self.rules) for key in gone}
        log.info("detector_state_forgotten", device=self.device,
                 rules=[rule for rule in self.rules if rule in named], rows=len(gone),
                 path=str(self._store.path))
        return events, in_rule_order(gone, self.rules)

    def _learned(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for learner in self._learners:
            data.update(learner.learned())
        return data

    def progress(self) -> dict[str, Any] | None:
        """Whether the device's rules learn or have learned, and since when, as a whole and per rule
        (`edge-agent status`); None when none learns. `since`: learning since the start or the last
        `forget`; learned since its oldest row finished (null: unknown)."""
        finished = self._stamp()
        if not finished:
            return None
        by_rule: dict[str, list[str]] = {}
        for key in finished:
            by_rule.setdefault(rule_of(key, self.rules) or "", []).append(key)
        warmup: dict[str, Warmup] = {}
        for learner in self._learners:
            warmup.update(learner.warmup())
        rules = {rule: self._state_of(keys, finished) for rule, keys in by_rule.items()}
        for rule, keys in by_rule.items():
            behind = [warmup[k] for k in keys if not finished[k] and k in warmup]
            if behind:  # the least advanced row of the rule says how far it is
                seen, needed, unit = min(behind, key=lambda w: w[0] / max(w[1], 1))
                rules[rule]["warmup"] = {"seen": seen, "needed": needed, "unit": unit}
        return {**self._state_of(list(finished), finished), "rows": len(finished),
                "learned_rows": sum(finished.values()), "rules": rules}

    def paused(self) -> dict[str, str]:
        """The rules waiting for their machine's state (`while_states`), in the order of the
        configuration: rule -> the gate they wait for."""
        waiting: dict[str, str] = {}
        for d in self._detectors:
            if isinstance(d, Pausable):
                waiting.update(d.paused())
        return {rule: waiting[rule] for rule in self.rules if rule in waiting}

    def _state_of(self, keys: Sequence[str], finished: Mapping[str, bool]) -> dict[str, Any]:
        learning = [self._started.get(key, self._started_ns) for key in keys if not finished[key]]
        if learning:
            return {"state": "learning", "since": utc_text(min(learning))}
        times = [self._learned_at.get(key) for key in keys]
        known = [t for t in times if t is not None]
        return {"state": "learned",
                "since": utc_text(min(known)) if len(known) == len(times) else None}

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        events = self._chain.on_batch(batch)
        milestones = self._count()
        if milestones != self._milestones:
            self._milestones = milestones
            self.save(batch.mono_ns)
        return events

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        events = self._chain.on_tick(mono_ns, time_ns)
        if self._learning:
            self._stamp()
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
