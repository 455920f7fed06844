"""Machine states, energy and usage: `state` events on each change, `energy` reports per
interval and per shift (a Detector over one device's machines).

The arithmetic is in `kernels.machine` (one call per batch for all machines of the device);
this class maps tags to roles, schedules the reports, turns the kernel's arrays into events
and hands the lifetime counters to `StateFile` so that they survive a restart.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.config.machines import ENERGY_COUNTER_KWH, MachineConfig
from agent.detect.kernels.counter import C_HAS, C_LAST
from agent.detect.kernels.machine import (
    A_CYCLES,
    A_FIELDS,
    A_KWH,
    A_PEAK_W,
    A_RESETS,
    A_SECONDS,
    A_STARTS,
    A_UNMEASURED_S,
    INTERVAL,
    LIFETIME,
    MS_CANDIDATE,
    MS_PENDING_KWH,
    MS_PENDING_S,
    MS_STATE,
    MT_LAST_MONO,
    MT_PEAK_NS,
    P_CYCLE_MODULUS,
    P_DEMAND_NS,
    P_DWELL_NS,
    P_FIELDS,
    P_HYSTERESIS,
    P_MAX_GAP_NS,
    P_METER_KWH,
    P_METER_MODULUS,
    P_THRESHOLDS,
    P_USE_METER,
    P_W_PER_UNIT,
    ROLE_CYCLES,
    ROLE_METER,
    ROLE_NONE,
    ROLE_RUN,
    ROLE_SIGNAL,
    SHIFT,
    TRANSITION_FIELDS,
    drop_candidates,
    machine_accumulate,
    new_machine_state,
)
from agent.detect.kernels.state import STATE_NAMES, UNKNOWN
from agent.detect.state_file import StateFile
from agent.detect.tag_layouts import TagLayouts
from agent.events import ENERGY, STATE, Event
from drivers.samples import SampleBatch

PERSIST_INTERVAL_S = 60.0
"""How often the lifetime counters are written (and at every report and at shutdown): a
power cut loses at most this much of them."""

_ROLES = {"power_tag": ROLE_SIGNAL, "current_tag": ROLE_SIGNAL, "run_tag": ROLE_RUN,
          "energy_counter_tag": ROLE_METER, "cycle_counter_tag": ROLE_CYCLES}


@dataclass(frozen=True, slots=True)
class MachineSetup:
    """A machine's configuration with what its device adds: the gap bound and the moduli."""

    config: MachineConfig
    max_gap_s: float
    meter_modulus: float | None = None
    cycle_modulus: float | None = None


def _params(setup: MachineSetup) -> np.ndarray:
    c = setup.config
    p = np.zeros(P_FIELDS, dtype=np.float64)
    idle, running, overload, hysteresis = c.thresholds()
    p[P_THRESHOLDS:P_THRESHOLDS + 3] = (idle, running, overload)
    p[P_HYSTERESIS] = hysteresis
    p[P_DWELL_NS] = c.min_dwell_s * 1e9
    p[P_W_PER_UNIT] = c.watts_per_signal_unit()
    p[P_USE_METER] = 1.0 if c.energy_counter_tag is not None else 0.0
    p[P_METER_KWH] = ENERGY_COUNTER_KWH[c.energy_counter_unit]
    p[P_METER_MODULUS] = setup.meter_modulus or 0.0
    p[P_CYCLE_MODULUS] = setup.cycle_modulus or 0.0
    p[P_MAX_GAP_NS] = setup.max_gap_s * 1e9
    p[P_DEMAND_NS] = c.demand_window_s * 1e9
    return p


def _next_shift(time_ns: int, shifts: Sequence[str], zone: zoneinfo.ZoneInfo) -> tuple[int, str]:
    """The first shift start after `time_ns` (UTC ns) and the label of the shift it ends."""
    local = dt.datetime.fromtimestamp(time_ns / 1e9, zone)
    starts = []
    for day in (-1, 0, 1):
        date = local.date() + dt.timedelta(days=day)
        for shift in shifts:
            hour, minute = (int(x) for x in shift.split(":"))
            moment = dt.datetime.combine(date, dt.time(hour, minute), tzinfo=zone)
            starts.append((int(moment.timestamp()) * 1_000_000_000, shift))
    starts.sort()
    for i, (start_ns, _) in enumerate(starts):
        if start_ns > time_ns:
            return start_ns, starts[i - 1][1]
    raise AssertionError("a shift starts every day")  # pragma: no cover


class MachineDetector:
    """State, energy and usage of the machines of one device (a Detector)."""

    def __init__(self, device: str, machines: Sequence[MachineSetup],
                 store: StateFile | None = None) -> None:
        self._device = device
        self._setups = tuple(machines)
        self._store = store
        n = len(self._setups)
        self._params = np.stack([_params(s) for s in self._setups]) if n else np.zeros((0, P_FIELDS))
        self._ms, self._mt, self._counters, self._acc = new_machine_state(n)
        self._roles: dict[str, tuple[int, int]] = {}
        for m, setup in enumerate(self._setups):
            for role, tag in setup.config.tags().items():
                self._roles[tag] = (_ROLES[role], m)
        self._names = {s.config.name: m for m, s in enumerate(self._setups)}
        self._index_cache: TagLayouts[tuple[np.ndarray, np.ndarray]] = TagLayouts()
        self._zones = [zoneinfo.ZoneInfo(s.config.timezone) for s in self._setups]
        self._started = False
        self._report_due_mono = [0] * n
        self._period_start_ns = [[0, 0] for _ in range(n)]
        self._shift_due_ns: list[tuple[int, str] | None] = [None] * n
        self._persist_due_mono = 0
        if store is not None:
            self._restore(store.load())

    # --- the Detector protocol -----------------------------------------------------------

    def on_batch(self, batch: SampleBatch) -> list[Event]:
        events = self.on_tick(batch.mono_ns, batch.time_ns)
        role, machine = self._index(batch.tags)
        out = np.zeros((len(batch.tags), TRANSITION_FIELDS), dtype=np.int64)
        changes = machine_accumulate(self._params, self._ms, self._mt, self._counters, self._acc,
                                     role, machine, batch.values, batch.quality,
                                     batch.mono_ns, batch.time_ns, out)
        events += [self._state_event(row) for row in out[:changes]]
        return events

    def on_tick(self, mono_ns: int, time_ns: int) -> list[Event]:
        if not self._started:
            self._start(mono_ns, time_ns)
        events = []
        for m, setup in enumerate(self._setups):
            if mono_ns >= self._report_due_mono[m]:
                events.append(self._report(m, INTERVAL, time_ns, complete=True))
                interval_ns = int(setup.config.report_interval_s * 1e9)
                # Skip whole intervals the agent slept through (a suspended process).
                behind = (mono_ns - self._report_due_mono[m]) // interval_ns
                self._report_due_mono[m] += (behind + 1) * interval_ns
            shift = self._shift_due_ns[m]
            if shift is not None and time_ns >= shift[0]:
                events.append(self._report(m, SHIFT, time_ns, complete=True, shift=shift[1]))
                self._shift_due_ns[m] = _next_shift(time_ns, setup.config.shifts, self._zones[m])
        if events or mono_ns >= self._persist_due_mono:
            self._save()
            self._persist_due_mono = mono_ns + int(PERSIST_INTERVAL_S * 1e9)
        return events

    def flush(self, time_ns: int) -> list[Event]:
        """The reports of the periods in progress (marked incomplete), and the counters saved;
        a dwell in progress ends unconfirmed, in the state in force."""
        if not self._started:
            return []
        drop_candidates(self._ms, self._acc)
        events = []
        for m, setup in enumerate(self._setups):
            events.append(self._report(m, INTERVAL, time_ns, complete=False))
            shift = self._shift_due_ns[m]
            if shift is not None:
                events.append(self._report(m, SHIFT, time_ns, complete=False,
                                           shift=_next_shift(time_ns - 1, setup.config.shifts,
                                                             self._zones[m])[1]))
        self._save()
        return events

    def level_of(self, machine: str, mono_ns: int) -> int:
        """The level a machine's signal asks for at its last sample (`kernels.state`: OFF ...
        OVERLOAD), before the dwell confirms it as the state `state` events report; read by the
        gates. UNKNOWN before the first signal sample and once the last is older than the gap
        bound."""
        m = self._names[machine]
        if (int(self._ms[m, MS_STATE]) == UNKNOWN
                or mono_ns - int(self._mt[m, MT_LAST_MONO]) > self._params[m, P_MAX_GAP_NS]):
            return UNKNOWN
        return int(self._ms[m, MS_CANDIDATE])

    def wait_saved(self) -> None:
        if self._store is not None:
            self._store.wait_saved()

    # --- events --------------------------------------------------------------------------

    def _start(self, mono_ns: int, time_ns: int) -> None:
        self._started = True
        for m, setup in enumerate(self._setups):
            self._report_due_mono[m] = mono_ns + int(setup.config.report_interval_s * 1e9)
            self._period_start_ns[m] = [time_ns, time_ns]
            if setup.config.shifts:
                self._shift_due_ns[m] = _next_shift(time_ns, setup.config.shifts, self._zones[m])
        self._persist_due_mono = mono_ns + int(PERSIST_INTERVAL_S * 1e9)

    def _state_event(self, row: np.ndarray) -> Event:
        m, before, after, at_ns, dwell_ns = (int(x) for x in row)
        config = self._setups[m].config
        data = {
            "machine": config.name,
            "tag": config.signal_tag,
            "from": None if before == UNKNOWN else STATE_NAMES[before],
            "to": STATE_NAMES[after],
            "at_ns": at_ns,
            "dwell_s": None if dwell_ns < 0 else dwell_ns / 1e9,
        }
        return Event(STATE, self._device, at_ns, data)

    def _report(self, m: int, period: int, end_ns: int, *, complete: bool,
                shift: str | None = None) -> Event:
        config = self._setups[m].config
        acc, total = self._acc[m, period], self._acc[m, LIFETIME]
        has_energy = config.energy_counter_tag is not None or not math.isnan(
            config.watts_per_signal_unit())

        def by_state(values: np.ndarray, scale: float = 1.0) -> dict[str, float]:
            return {name: float(values[i]) * scale for i, name in enumerate(STATE_NAMES)}

        kwh = acc[A_KWH:A_KWH + 4]
        total_kwh = float(kwh.sum())
        cycles = float(acc[A_CYCLES])
        data: dict[str, Any] = {
            "machine": config.name,
            "tag": config.signal_tag,
            "period": "interval" if period == INTERVAL else "shift",
            "start_ns": self._period_start_ns[m][period],
            "end_ns": end_ns,
            "complete": complete,
            "energy_source": ("meter" if config.energy_counter_tag is not None
                              else "power" if has_energy else None),
            "kwh": by_state(kwh) if has_energy else None,
            "idle_kwh": float(kwh[1]) if has_energy else None,
            "total_kwh": total_kwh if has_energy else None,
            "hours": by_state(acc[A_SECONDS:A_SECONDS + 4], 1 / 3600),
            "operating_h": float(acc[A_SECONDS + 1:A_SECONDS + 4].sum()) / 3600,
            "starts": int(acc[A_STARTS]),
            "peak_demand_w": float(acc[A_PEAK_W]) if acc[A_PEAK_W] >= 0 else None,
            "peak_demand_ns": int(self._mt[m, MT_PEAK_NS + period]) if acc[A_PEAK_W] >= 0 else None,
            "unmeasured_s": float(acc[A_UNMEASURED_S]),
            "counter_resets": int(acc[A_RESETS]),
            "totals": {
                "kwh": by_state(total[A_KWH:A_KWH + 4]) if has_energy else None,
                "operating_h": float(total[A_SECONDS + 1:A_SECONDS + 4].sum()) / 3600,
                "starts": int(total[A_STARTS]),
            },
        }
        if shift is not None:
            data["shift"] = shift
        if config.cycle_counter_tag is not None:
            data["cycles"] = cycles
            data["kwh_per_cycle"] = total_kwh / cycles if has_energy and cycles > 0 else None
            data["totals"]["cycles"] = float(total[A_CYCLES])
        self._acc[m, period, :] = 0.0
        self._acc[m, period, A_PEAK_W] = -1.0
        self._period_start_ns[m][period] = end_ns
        return Event(ENERGY, self._device, end_ns, data)

    # --- batch layout and persistence ---------------------------------------------------

    def _index(self, tags: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        cached = self._index_cache.get(tags)
        if cached is None:
            pairs = [self._roles.get(tag, (ROLE_NONE, 0)) for tag in tags]
            cached = (np.array([p[0] for p in pairs], dtype=np.int64),
                      np.array([p[1] for p in pairs], dtype=np.int64))
            self._index_cache[tags] = cached
        return cached

    def _snapshot(self) -> dict[str, Any]:
        """The lifetime totals, a dwell in progress counted in the state in force (after a
        power cut no sample will confirm it; the counters' last values include its energy)."""
        machines = {}
        for m, setup in enumerate(self._setups):
            total = self._acc[m, LIFETIME]
            kwh, seconds = total[A_KWH:A_KWH + 4].copy(), total[A_SECONDS:A_SECONDS + 4].copy()
            state = int(self._ms[m, MS_STATE])
            if state != UNKNOWN:
                kwh[state] += self._ms[m, MS_PENDING_KWH]
                seconds[state] += self._ms[m, MS_PENDING_S]
            c = setup.config
            machines[c.name] = {
                "kwh": [float(x) for x in kwh],
                "seconds": [float(x) for x in seconds],
                "starts": float(total[A_STARTS]),
                "cycles": float(total[A_CYCLES]),
                "resets": float(total[A_RESETS]),
                "unmeasured_s": float(total[A_UNMEASURED_S]),
                "energy_counter": [c.energy_counter_tag, *self._counter(2 * m)],
                "cycle_counter": [c.cycle_counter_tag, *self._counter(2 * m + 1)],
            }
        return machines

    def _counter(self, row: int) -> list[float]:
        return [float(self._counters[row, C_HAS]), float(self._counters[row, C_LAST])]

    def _restore(self, saved: dict[str, Any]) -> None:
        """Lifetime totals back from the file; a counter's last raw value only when the same
        tag is still configured (another tag's value would make a false increase)."""
        for m, setup in enumerate(self._setups):
            entry = saved.get(setup.config.name)
            if not isinstance(entry, dict):
                continue
            try:
                total = self._acc[m, LIFETIME]
                total[A_KWH:A_KWH + 4] = entry["kwh"]
                total[A_SECONDS:A_SECONDS + 4] = entry["seconds"]
                total[A_STARTS] = entry["starts"]
                total[A_CYCLES] = entry["cycles"]
                total[A_RESETS] = entry["resets"]
                total[A_UNMEASURED_S] = entry["unmeasured_s"]
                for row, key, tag in ((2 * m, "energy_counter", setup.config.energy_counter_tag),
                                      (2 * m + 1, "cycle_counter", setup.config.cycle_counter_tag)):
                    saved_tag, has, last = entry[key]
                    if tag is not None and saved_tag == tag:
                        self._counters[row, C_HAS], self._counters[row, C_LAST] = has, last
            except (KeyError, TypeError, ValueError):
                self._acc[m, LIFETIME, :A_FIELDS] = 0.0
                self._acc[m, LIFETIME, A_PEAK_W] = -1.0

    def _save(self) -> None:
        if self._store is not None:
            self._store.save(self._snapshot())
