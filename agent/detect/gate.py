"""Rules that learn and score only while their machine is in given states (`while_states`).

Outside its operating state a signal is not abnormal, just something else (docs/detection.md,
"Only in some machine states"). `StateGated` wraps the detector of a device's rules of one
gate (machine, states, `settle_s`). The `MachineDetector` sees each batch first, so a batch
is judged by its own samples' state (`level_of`: at once, not after the dwell; closed while
the signal is stale). While closed the rules get no samples: nothing learned or scored, no
episode starts. On closing, episodes in progress end `ongoing` (`ended_by: machine_state`)
and each kind restarts what a pause would fool (`interrupt`). Learned state is keyed by the
gate too: a changed gate learns again.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from agent.config.detection import Gate
from agent.detect.learned_state import Learner, Warmup
from agent.events import Event
from drivers.samples import SampleBatch

ENDED_BY = "machine_state"
"""`ended_by` of an episode ended because its machine left the rule's states."""


class MachineStates(Protocol):
    """Where a gate reads a machine's state (`MachineDetector`)."""

    def level_of(self, machine: str, mono_ns: int) -> int: ...


@runtime_checkable
class GatedDetector(Learner, Protocol):
    """What a gate wraps: the detector of one kind of rules (a Detector too), whose rows
    can stop being fed for a while (`interrupt`)."""

    def interrupt(self, time_ns: int, mono_ns: int, why: str) -> list[Event]: ...

    def on_batch(self, batch: SampleBatch) -> list[Event]: ...

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]: ...

    def flush(self, time_ns: int) -> list[Event]: ...

    def scores(self) -> Mapping[str, float]: ...


def gated_key(key: str, gate: Gate) -> str:
    """A learned row's key (`learned_state.row_key`: kind|score key|digest) with the gate
    folded into its digest: the same row under another gate learned something else."""
    head, _, digest = key.rpartition("|")
    mixed = hashlib.sha256(f"{digest}|{gate.describe()}".encode()).hexdigest()[:16]
    return f"{head}|{mixed}"


class StateGated:
    """A detector of rules that run only while a machine is in some states (a Detector,
    ScoringDetector and Learner, as the detector it wraps)."""

    def __init__(self, inner: GatedDetector, gate: Gate, machines: MachineStates,
                 rules: tuple[str, ...] = ()) -> None:
        self._inner = inner
        self._rules = rules
        """The names of the rules it holds (`paused`)."""
        self._gate = gate
        self._codes = gate.codes
        self._settle_ns = int(gate.settle_s * 1e9)
        self._machines = machines
        self._in_since: int | None = None
        """Monotonic ns since which the machine has been in the states (None: it is not)."""
        self.open = False
        """The rules were fed the last batch."""

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        if self._machines.level_of(self._gate.machine, batch.mono_ns) in self._codes:
            if self._in_since is None:
                self._in_since = batch.mono_ns
            now_open = batch.mono_ns - self._in_since >= self._settle_ns
        else:
            self._in_since = None
            now_open = False
        events: list[Event] = []
        if self.open and not now_open:
            events = self._inner.interrupt(batch.time_ns, batch.mono_ns, ENDED_BY)
        self.open = now_open
        if now_open:
            events += self._inner.on_batch(batch)
        return events

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        return self._inner.on_tick(mono_ns, time_ns) if self.open else []

    def flush(self, time_ns: int) -> list[Event]:
        return self._inner.flush(time_ns)

    def paused(self) -> Mapping[str, str]:
        """Its rules and the gate they wait for, while it is closed (`edge-agent status`)."""
        return {} if self.open else dict.fromkeys(self._rules, self._gate.describe())

    def scores(self) -> Mapping[str, float]:
        """The rules' scores while the gate is open; NaN while it is closed (not scored)."""
        scores = self._inner.scores()
        return scores if self.open else dict.fromkeys(scores, math.nan)

    # --- Learner: the inner detector's rows, under keys that name the gate ---------------

    def learned(self) -> dict[str, Any]:
        return {gated_key(key, self._gate): v for key, v in self._inner.learned().items()}

    def restore(self, saved: Mapping[str, Any]) -> int:
        mine = {}
        for key in self._inner.finished():
            outer = gated_key(key, self._gate)
            if outer in saved:
                mine[key] = saved[outer]
        return self._inner.restore(mine)

    def milestones(self) -> int:
        return self._inner.milestones()

    def finished(self) -> dict[str, bool]:
        return {gated_key(key, self._gate): done for key, done in self._inner.finished().items()}

    def warmup(self) -> dict[str, Warmup]:
        return {gated_key(key, self._gate): w for key, w in self._inner.warmup().items()}
