"""Which device windows are open, on disk: the start after a power cut names those it lost.

A kill loses no window (window_keep.py resumes it from RAM), but a power cut empties /dev/shm
and the windows then open, which have no seq, were counted nowhere. `open-windows.slots` in
the state dir lists each device's open window (device, start_ns, window_s), saved in place
(`StateFile`, two slots: one block a save) when they change: rollovers at most once per
`window_s` for all devices together, a device gaining or losing its window within `settle`;
emptied at a clean stop. At start, a window listed that its device did not resume from RAM
is lost: one `windows_lost` event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.detect.state_file import StateFile
from agent.events import GATEWAY_DEVICE, WINDOWS_LOST, Event

log = structlog.get_logger(__name__)

FILE_NAME = "open-windows.slots"
SETTLE_MAX_S = 2.0
"""At most this long (a quarter window when shorter) between a window's change and its write."""


@dataclass(frozen=True, slots=True)
class OpenWindow:
    device: str
    start_ns: int
    window_s: float


class OpenWindows:
    """The agent's open windows, one per device, and the file that lists them. The window
    aggregators call `opened`/`closed`; the supervisor calls `save_if_due` on its ticker,
    `lost` and `report` once at start, `save_now` after the last flush at a stop."""

    def __init__(self, state_dir: Path,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock
        self._file = StateFile(state_dir / FILE_NAME, in_place=True)
        self._open: dict[str, OpenWindow] = {}
        self._on_disk: dict[str, OpenWindow] = {}
        self._closed_mono_ns: dict[str, int] = {}
        self._resumed: set[str] = set()
        self._differs_since_ns: int | None = None
        self._saved_mono_ns: int | None = None
        self._previous: list[OpenWindow] = []
        self._previous_saved_ns: int | None = None
        self.lost_total = 0
        self._read()

    @property
    def path(self) -> Path:
        return self._file.path

    def _read(self) -> None:
        """What the last run left open. A file that cannot be read is logged and ignored:
        the start goes on, only the report of what a power cut lost is missing."""
        if not self.path.exists():
            return
        document = self._file.load_document()
        data = document.get("data")
        try:
            if not isinstance(data, dict):
                raise TypeError("no data")
            windows = [OpenWindow(str(d), int(s), float(w)) for d, s, w in data["windows"]]
            saved_ns = int(document["saved_ns"])
            lost_total = int(document.get("lost_total", 0))
        except (KeyError, TypeError, ValueError) as exc:
            log.error("open_windows_unreadable", path=str(self.path), error=repr(exc),
                      detail="ignored: the windows a power cut before this start lost, if "
                             "any, cannot be named")
            return
        self._previous, self._previous_saved_ns, self.lost_total = windows, saved_ns, lost_total
        self._on_disk = {w.device: w for w in windows}

    # --- from the window aggregators ------------------------------------------------------

    def opened(self, device: str, start_ns: int, window_s: float, *,
               resumed: bool = False) -> None:
        """`device` opened a window (`resumed`: the one a killed run left open, from RAM)."""
        self._open[device] = OpenWindow(device, start_ns, window_s)
        self._closed_mono_ns.pop(device, None)
        if resumed:
            self._resumed.add(device)

    def closed(self, device: str) -> None:
        if self._open.pop(device, None) is not None:
            self._closed_mono_ns[device] = self._clock()

    # --- from the supervisor --------------------------------------------------------------

    def _wanted(self, mono_ns: int) -> dict[str, OpenWindow]:
        """What the file should list now: the open windows, and for half a window after it
        closed a device's last one (its next opens with its next poll, one write for both)."""
        wanted = dict(self._open)
        for device, closed_ns in self._closed_mono_ns.items():
            listed = self._on_disk.get(device)
            if device not in wanted and listed is not None and \
                    mono_ns - closed_ns < listed.window_s * 0.5e9:
                wanted[device] = listed
        return wanted

    def save_if_due(self) -> bool:
        """Write the file once what it should list has differed from it for `settle`, and
        then only if a device gained or lost its window, or the last write is a window old."""
        mono_ns = self._clock()
        wanted = self._wanted(mono_ns)
        if wanted == self._on_disk:
            self._differs_since_ns = None
            return False
        if self._differs_since_ns is None:
            self._differs_since_ns = mono_ns
        window_s = min(w.window_s for w in (*wanted.values(), *self._on_disk.values()))
        if mono_ns - self._differs_since_ns < min(SETTLE_MAX_S, window_s / 4) * 1e9:
            return False
        if wanted.keys() == self._on_disk.keys() and self._saved_mono_ns is not None and \
                mono_ns - self._saved_mono_ns < window_s * 1e9:
            return False
        self._save(wanted, mono_ns)
        return True

    def save_now(self) -> None:
        """Write what is open now (at a clean stop, after the flush: nothing). Not before the
        last run's lost windows were reported: a start that fails first leaves them listed."""
        if not self._previous:
            self._save(dict(self._open), self._clock())

    def _save(self, windows: dict[str, OpenWindow], mono_ns: int) -> None:
        listed = sorted(windows.values(), key=lambda w: w.device)
        self._file.save({"windows": [[w.device, w.start_ns, w.window_s] for w in listed]},
                        {"saved_ns": time.time_ns(), "lost_total": self.lost_total})
        self._on_disk = windows
        self._differs_since_ns = None
        self._saved_mono_ns = mono_ns

    def wait_saved(self, timeout_s: float = 10.0) -> None:
        self._file.wait_saved(timeout_s)

    def lost(self) -> list[OpenWindow]:
        """The windows the last run left open that no device resumed (once the devices have
        started): those a power cut, a reboot or a failed resume lost."""
        return [w for w in self._previous if w.device not in self._resumed]

    def report(self, named: set[str] | None = None) -> Event | None:
        """Log and count the lost windows, once; the `windows_lost` event naming those of
        the devices in `named` (None: all; the caller leaves out devices shared `none`)."""
        lost = self.lost()
        saved_ns = self._previous_saved_ns
        self._previous = []  # reported: the file may be written again
        if not lost or saved_ns is None:
            return None
        self.lost_total += len(lost)
        now_ns = time.time_ns()
        entries = [{"dev": w.device, "start_ns": w.start_ns, "window_s": w.window_s}
                   for w in lost]
        log.warning("windows_not_closed", count=len(lost), windows=entries, saved_ns=saved_ns,
                    until_ns=now_ns, lost_total=self.lost_total,
                    detail="open when the agent last stopped without closing them (a power cut "
                           "or a reboot): their aggregates are lost")
        self.save_now()  # the count, and a second start does not name them again
        shown = [e for e in entries if named is None or e["dev"] in named]
        if not shown:
            return None
        data: dict[str, Any] = {"windows": shown, "saved_ns": saved_ns, "until_ns": now_ns,
                                "lost_total": self.lost_total}
        return Event(WINDOWS_LOST, GATEWAY_DEVICE, now_ns, data)
