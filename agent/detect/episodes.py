"""From the episode arrays of a kernel to `anomaly` and `limit` events, with their context.

Each episode gives two events that share an `episode` id: `phase: start` as soon as it is
recognised (the cloud does not wait for the end of a long one), and `phase: end` once the
`context_samples` samples after its end have arrived (or at shutdown, with what there is).
Plain Python, but only for rows whose counters moved: a quiet batch costs nothing when the
kernel says which rows those are (the univariate kernels do), else three array tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.detect.kernels.episode import (
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
    IDLE,
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

_COUNTERS = np.array([EP_STARTED, EP_ENDED, EP_AFTER_DONE])
"""The episode columns `collect` reads and resets."""


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
    def kind(self) -> str:
        """The kind of its events: `limit` for a limit row, else `anomaly`."""
        return LIMIT if self.bound is not None else ANOMALY

    @property
    def score_key(self) -> str:
        """The row's name in `scores()`: `rule:tag` (`rule:tag:part`), or the rule for a group."""
        if len(self.tags) > 1:
            return self.rule
        key = f"{self.rule}:{self.tags[0]}"
        return f"{key}:{self.part}" if self.part else key


def _episode_id() -> str:
    """A random UUID4 as 32 hex digits, as `uuid.uuid4().hex` gives it (the same os.urandom bytes,
    version and variant bits), without building a UUID object: this runs for every episode."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # variant RFC 4122
    return b.hex()


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

    def collect(self, ep: F64, times: I64, ctx: F64, raised: I64 | None = None) -> list[Event]:
        """The events of the rows whose STARTED, ENDED or AFTER_DONE counter is raised, and those
        counters back to 0. `raised`: those rows, ascending, when the kernel said which (every
        other row's counters are 0); else every row is looked at."""
        if raised is None:
            if not (ep[:, EP_STARTED].any() or ep[:, EP_ENDED].any()
                    or ep[:, EP_AFTER_DONE].any()):
                return []
            rows = np.flatnonzero(ep[:, EP_STARTED] + ep[:, EP_ENDED] + ep[:, EP_AFTER_DONE])
        else:
            rows = raised
        # The rows' episode fields and times as Python lists, read at once: an event reads a
        # dozen of them, and a numpy scalar read costs what a whole list does. Of a row's
        # ring only the spans an event takes become lists (`_span`): a ring grown for
        # bursts holds hundreds of samples (of every tag of a group).
        listed = rows.tolist()
        got = list(zip(listed, ep[rows].tolist(), times[rows].tolist(),
                       [ctx[r] for r in listed], strict=True))
        events: list[Event] = []
        for r, e, t, ring in got:
            if not e[EP_ENDED]:
                continue
            if r in self._ending:  # a second end before the first one's context was complete
                events.append(self._end_event(r, e, ring, complete=False))
            if r not in self._open:  # started and ended within this one batch
                events.append(self._start_event(r, e, t, ring, ended=True))
            self._ending[r] = self._end_data(r, e, t)
        for r, e, _, ring in got:
            if e[EP_AFTER_DONE] and r in self._ending:
                events.append(self._end_event(r, e, ring, complete=True))
        for r, e, t, ring in got:
            if e[EP_STARTED] and e[EP_STATE] in (ACTIVE, CLEARING) and r not in self._open:
                events.append(self._start_event(r, e, t, ring, ended=False))
        ep[rows[:, np.newaxis], _COUNTERS] = 0.0
        return events

    def flush(self, ep: F64, times: I64, ctx: F64, time_ns: int, mono_ns: int,
              ended_by: str | None = None) -> list[Event]:
        """At shutdown, or when the rows stop being watched (`ended_by`, e.g. `machine_state`): ends
        waiting for their context go out with what there is, a running episode ends `ongoing`. The
        rows are left idle, so the kernel starts afresh if they are fed again."""
        events = self.collect(ep, times, ctx)
        for row in list(self._ending):
            events.append(self._end_event(row, ep[row].tolist(), ctx[row],
                                          complete=False))
            ep[row, EP_AFTER_LEFT] = 0.0
        for row in list(self._open):
            info = self._rows[row]
            episode, before = self._open.pop(row)
            e, t = ep[row].tolist(), times[row].tolist()
            data = self._common(info, e[EP_PEAK], e[EP_PEAK_VALUE], e[EP_THRESHOLD])
            data.update(phase="end", episode=episode, ongoing=True,
                        start_ns=t[T_PEND_TIME], peak_ns=t[T_PEAK_TIME], end_ns=time_ns,
                        duration_s=(mono_ns - t[T_PEND_MONO]) / 1e9)
            if ended_by is not None:
                data["ended_by"] = ended_by
            data["tags"] = {tag: {"before": before.get(tag, [])} for tag in info.tags}
            events.append(Event(info.kind, self._device, time_ns, data))
        ep[:, EP_STATE] = IDLE
        return events

    # --- building the events, from a row's episode fields `e`, times `t` and ring -------

    def _start_event(self, row: int, e: list[float], t: list[int], ring: F64, *,
                     ended: bool) -> Event:
        info = self._rows[row]
        episode = _episode_id()
        count = self._context[row]
        before = self._span(info, e, ring, int(e[EP_START_RING]) - count, count)
        if ended:
            peak, value, start = e[EP_ENDED_PEAK], e[EP_ENDED_PEAK_VALUE], t[T_ENDED_START_TIME]
            peak_ns = t[T_ENDED_PEAK_TIME]
        else:
            peak, value, start = e[EP_PEAK], e[EP_PEAK_VALUE], t[T_PEND_TIME]
            peak_ns = t[T_PEAK_TIME]
        self._open[row] = (episode, before)
        data = self._common(info, peak, value, e[EP_THRESHOLD])
        data["phase"] = "start"
        data["episode"] = episode
        data["start_ns"] = start
        data["peak_ns"] = peak_ns
        data["tags"] = {tag: {"before": values} for tag, values in before.items()}
        return Event(info.kind, self._device, start, data)

    def _end_data(self, row: int, e: list[float], t: list[int]) -> dict[str, Any]:
        episode, before = self._open.pop(row, ("", {}))
        data = self._common(self._rows[row], e[EP_ENDED_PEAK], e[EP_ENDED_PEAK_VALUE],
                            e[EP_THRESHOLD])
        data["phase"] = "end"
        data["episode"] = episode
        data["start_ns"] = t[T_ENDED_START_TIME]
        data["peak_ns"] = t[T_ENDED_PEAK_TIME]
        data["end_ns"] = t[T_ENDED_END_TIME]
        data["duration_s"] = (t[T_ENDED_END_MONO] - t[T_ENDED_START_MONO]) / 1e9
        data["before"] = before
        data["ring_at_end"] = int(e[EP_END_RING])
        return data

    def _end_event(self, row: int, e: list[float], ring: F64, *, complete: bool) -> Event:
        info = self._rows[row]
        data = self._ending.pop(row)
        before = data.pop("before")
        end = data.pop("ring_at_end")
        taken = int(e[EP_RING_N]) - end
        after = self._span(info, e, ring, end, min(taken, self._context[row]))
        data["tags"] = {tag: {"before": before.get(tag, []), "after": values}
                        for tag, values in after.items()}
        if not complete:
            data["context_complete"] = False
        return Event(info.kind, self._device, data["end_ns"], data)

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

    def _span(self, info: RowInfo, e: list[float], ring: F64, first: int,
              count: int) -> dict[str, list[float | None]]:
        """The row's good samples number `first` to `first + count - 1` (counting from the
        row's first), oldest first, per tag: those the ring (slots, or slots x the group's
        tags) still holds. Sample k lives in slot k mod size."""
        size = ring.shape[0]
        n = int(e[EP_RING_N])
        lo, hi = max(first, n - size, 0), min(first + count, n)
        if hi <= lo:
            taken: list[Any] = []
        else:
            a = lo % size
            b = a + hi - lo  # one slice, or two where the span wraps round the ring's end
            taken = ring[a:b].tolist() if b <= size else \
                ring[a:].tolist() + ring[:b - size].tolist()
        isnan = math.isnan
        if ring.ndim == 1:  # NaN only from a device that sent one as GOOD
            return {info.tags[0]: [None if isnan(v) else v for v in taken]
                    if any(map(isnan, taken)) else taken}
        return {tag: [None if isnan(s[i]) else s[i] for s in taken]
                for i, tag in enumerate(info.tags)}


def context_ring(ep: F64, ctx: F64, size: int) -> F64:
    """`ctx` with at least `size` slots per row, its samples kept. A row's sample k lives in slot
    k mod size; with up to b samples of a row per batch, a context of c samples around a start
    or end needs c + b - 1 slots to survive until the events are made."""
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
