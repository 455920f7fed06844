"""From the episode arrays of a kernel to `anomaly` and `limit` events, with their context.

Each episode gives two events that share an `episode` id: `phase: start` as soon as it is
recognised (the cloud does not wait for the end of a long one), and `phase: end` once the
`context_samples` samples after its end have arrived (or at shutdown, with what there is).
Plain Python, but only for rows whose counters moved: a quiet batch costs three array tests.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.detect.kernels_episode import (
    ACTIVE,
    CLEARING,
    EP_AFTER_DONE,
    EP_AFTER_LEFT,
    EP_END_RING,
    EP_ENDED,
    EP_ENDED_PEAK,
    EP_ENDED_PEAK_VALUE,
    EP_PEAK,
    EP_PEAK_VALUE,
    EP_RING_N,
    EP_RING_POS,
    EP_START_RING,
    EP_STARTED,
    EP_STATE,
    EP_THRESHOLD,
    T_ENDED_END_MONO,
    T_ENDED_END_TIME,
    T_ENDED_PEAK_TIME,
    T_ENDED_START_MONO,
    T_ENDED_START_TIME,
    T_PEAK_TIME,
    T_PEND_MONO,
    T_PEND_TIME,
)
from agent.events import ANOMALY, LIMIT, Event

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class RowInfo:
    """What a row of a detector is about: its rule, detector kind and tag(s)."""

    rule: str
    detector: str
    tags: tuple[str, ...]
    bound: str | None = None
    """Limit rows only: `level` (low/high) or `rate`."""
    low: float | None = None
    high: float | None = None
    max_rate_per_s: float | None = None
    part: str = ""
    """Which check of the rule, when a tag has several (`rate`, `silent`, a band's name)."""
    band_hz: tuple[float, float] | None = None
    """`band_rms` rows only: the band's edges; `part` is its name."""

    @property
    def score_key(self) -> str:
        """The row's name in `scores()`: `rule:tag` (`rule:tag:part`), or the rule for a group."""
        if len(self.tags) > 1:
            return self.rule
        key = f"{self.rule}:{self.tags[0]}"
        return f"{key}:{self.part}" if self.part else key


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


class EpisodeEvents:
    """Turns one detector's episode counters into events; holds the open episodes' ids."""

    def __init__(self, device: str, rows: Sequence[RowInfo], context: Sequence[int]) -> None:
        self._device = device
        self._rows = tuple(rows)
        self._context = tuple(context)
        """Samples of context before and after, per row."""
        self._open: dict[int, tuple[str, dict[str, list[float | None]]]] = {}
        """row -> (episode id, context before), from its start event to its end."""
        self._ending: dict[int, dict[str, Any]] = {}
        """row -> the end event's data, waiting for the context after the end."""

    def collect(self, ep: F64, times: I64, ctx: F64) -> list[Event]:
        if not (ep[:, EP_STARTED].any() or ep[:, EP_ENDED].any() or ep[:, EP_AFTER_DONE].any()):
            return []
        events: list[Event] = []
        for row in np.flatnonzero(ep[:, EP_ENDED]):
            r = int(row)
            if r in self._ending:  # a second end before the first one's context was complete
                events.append(self._end_event(r, ep, ctx, complete=False))
            if r not in self._open:  # started and ended within this one batch
                events.append(self._start_event(r, ep, times, ctx, ended=True))
            self._ending[r] = self._end_data(r, ep, times)
        for row in np.flatnonzero(ep[:, EP_AFTER_DONE]):
            if int(row) in self._ending:
                events.append(self._end_event(int(row), ep, ctx, complete=True))
        for row in np.flatnonzero(ep[:, EP_STARTED]):
            if ep[row, EP_STATE] in (ACTIVE, CLEARING) and int(row) not in self._open:
                events.append(self._start_event(int(row), ep, times, ctx, ended=False))
        ep[:, EP_STARTED] = 0.0
        ep[:, EP_ENDED] = 0.0
        ep[:, EP_AFTER_DONE] = 0.0
        return events

    def flush(self, ep: F64, times: I64, ctx: F64, time_ns: int, mono_ns: int) -> list[Event]:
        """At shutdown: every end still waiting for its context goes out with what there is;
        an episode still running gets an end event marked `ongoing`."""
        events = self.collect(ep, times, ctx)
        for row in list(self._ending):
            events.append(self._end_event(row, ep, ctx, complete=False))
            ep[row, EP_AFTER_LEFT] = 0.0
        for row in list(self._open):
            info = self._rows[row]
            episode, before = self._open.pop(row)
            data = self._common(info, ep[row, EP_PEAK], ep[row, EP_PEAK_VALUE],
                                ep[row, EP_THRESHOLD])
            data.update(phase="end", episode=episode, ongoing=True,
                        start_ns=int(times[row, T_PEND_TIME]),
                        peak_ns=int(times[row, T_PEAK_TIME]), end_ns=time_ns,
                        duration_s=(mono_ns - int(times[row, T_PEND_MONO])) / 1e9)
            data["tags"] = {t: {"before": before.get(t, [])} for t in info.tags}
            events.append(self._event(info, time_ns, data))
        return events

    # --- building the events ----------------------------------------------------------

    def _start_event(self, row: int, ep: F64, times: I64, ctx: F64, *, ended: bool) -> Event:
        info = self._rows[row]
        episode = uuid.uuid4().hex
        count = self._context[row]
        before = self._span(ep, ctx, row, int(ep[row, EP_START_RING]) - count, count)
        if ended:
            peak, value, start = ep[row, EP_ENDED_PEAK], ep[row, EP_ENDED_PEAK_VALUE], \
                int(times[row, T_ENDED_START_TIME])
            peak_ns = int(times[row, T_ENDED_PEAK_TIME])
        else:
            peak, value, start = ep[row, EP_PEAK], ep[row, EP_PEAK_VALUE], \
                int(times[row, T_PEND_TIME])
            peak_ns = int(times[row, T_PEAK_TIME])
        self._open[row] = (episode, before)
        data = self._common(info, peak, value, ep[row, EP_THRESHOLD])
        data.update(phase="start", episode=episode, start_ns=start, peak_ns=peak_ns)
        data["tags"] = {t: {"before": before[t]} for t in info.tags}
        return self._event(info, start, data)

    def _end_data(self, row: int, ep: F64, times: I64) -> dict[str, Any]:
        info = self._rows[row]
        episode, before = self._open.pop(row, ("", {}))
        data = self._common(info, ep[row, EP_ENDED_PEAK], ep[row, EP_ENDED_PEAK_VALUE],
                            ep[row, EP_THRESHOLD])
        start_mono = int(times[row, T_ENDED_START_MONO])
        data.update(phase="end", episode=episode,
                    start_ns=int(times[row, T_ENDED_START_TIME]),
                    peak_ns=int(times[row, T_ENDED_PEAK_TIME]),
                    end_ns=int(times[row, T_ENDED_END_TIME]),
                    duration_s=(int(times[row, T_ENDED_END_MONO]) - start_mono) / 1e9,
                    before=before, ring_at_end=int(ep[row, EP_END_RING]))
        return data

    def _end_event(self, row: int, ep: F64, ctx: F64, *, complete: bool) -> Event:
        info = self._rows[row]
        data = self._ending.pop(row)
        before = data.pop("before")
        end = data.pop("ring_at_end")
        taken = int(ep[row, EP_RING_N]) - end
        after = self._span(ep, ctx, row, end, min(taken, self._context[row]))
        data["tags"] = {t: {"before": before.get(t, []), "after": after[t]} for t in info.tags}
        if not complete:
            data["context_complete"] = False
        return self._event(info, data["end_ns"], data)

    def _common(self, info: RowInfo, peak: float, peak_value: float,
                threshold: float) -> dict[str, Any]:
        data: dict[str, Any] = {"rule": info.rule, "detector": info.detector,
                                "score": _number(peak), "threshold": _number(threshold)}
        if info.bound is not None:  # a limit: which bound, how far past it at worst
            side = "rate" if info.bound == "rate" else (
                "high" if info.high is not None and peak_value >= info.high else "low")
            data.update(bound=side, max_excess=_number(peak), peak_value=_number(peak_value),
                        limit={"high": info.high, "low": info.low,
                               "rate": info.max_rate_per_s}[side])
            del data["score"]
        elif len(info.tags) == 1:
            data["peak_value"] = _number(peak_value)
        if info.band_hz is not None:  # which band of the tag's spectrum
            data.update(band=info.part, band_hz=list(info.band_hz))
        return data

    def _event(self, info: RowInfo, time_ns: int, data: dict[str, Any]) -> Event:
        return Event(LIMIT if info.bound is not None else ANOMALY, self._device, time_ns, data)

    def _span(self, ep: F64, ctx: F64, row: int, first: int,
              count: int) -> dict[str, list[float | None]]:
        """The row's good samples number `first` to `first + count - 1` (counting from the
        row's first), oldest first, per tag: those the ring still holds."""
        info = self._rows[row]
        size = ctx.shape[1]
        n = int(ep[row, EP_RING_N])
        slots = np.arange(max(first, n - size, 0), min(first + count, n)) % size
        if ctx.ndim == 2:
            return {info.tags[0]: [_number(v) for v in ctx[row, slots]]}
        return {tag: [_number(v) for v in ctx[row, slots, i]] for i, tag in enumerate(info.tags)}


def context_ring(ep: F64, ctx: F64, size: int) -> F64:
    """`ctx` with at least `size` slots per row, its samples kept.

    A row's sample k lives in slot k mod size (`ring_slot`). When a batch brings up to b
    samples of a row, the context of c samples around an episode's start or end needs
    c + b - 1 slots to survive until the events are made after the batch."""
    old = ctx.shape[1]
    if size <= old:
        return ctx
    grown = np.full((ctx.shape[0], size, *ctx.shape[2:]), np.nan)
    for row in range(ctx.shape[0]):
        n = int(ep[row, EP_RING_N])
        kept = np.arange(max(n - old, 0), n)
        grown[row, kept % size] = ctx[row, kept % old]
        ep[row, EP_RING_POS] = n % size
    return grown
