"""Can the wall clock be trusted? A gateway without a real-time clock boots with a wrong time.

With `gateway.clock: ntp` (the default: a Raspberry Pi has no RTC) the clock counts as
synchronized once the kernel says so: NTP daemons (systemd-timesyncd, chrony) clear
STA_UNSYNC through adjtimex when they have disciplined it. Until then events are marked
with the monotonic time they happened and the boot they happened in, so that their
timestamps can be corrected once the clock is right (CLOCK_MONOTONIC runs on, steadily,
through the clock step). With `gateway.clock: rtc` the clock is trusted from the start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable
from pathlib import Path

_TIME_ERROR = 5
"""adjtimex's answer when the clock is not synchronized."""


def kernel_clock_synchronized() -> bool:
    """What the kernel says (adjtimex with modes=0 reads, it never changes the clock)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    timex = ctypes.create_string_buffer(512)  # struct timex is 208 bytes on 64-bit Linux
    state = int(libc.adjtimex(timex))
    return state not in (-1, _TIME_ERROR)


def read_boot_id() -> str:
    """Identifies the boot: monotonic times of two boots cannot be compared."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


BOOT_ID = read_boot_id()


class ClockWatch:
    """Whether the wall clock is synchronized; once it is, it stays so for this process."""

    def __init__(
        self, mode: str, probe: Callable[[], bool] = kernel_clock_synchronized,
        check_interval_s: float = 1.0,
    ) -> None:
        self._synced = mode == "rtc"
        self._probe = probe
        self._interval_s = check_interval_s
        self._checked_at = -float("inf")

    def synchronized(self) -> bool:
        if not self._synced:
            now = time.monotonic()
            if now - self._checked_at >= self._interval_s:
                self._checked_at = now
                self._synced = self._probe()
        return self._synced

    @staticmethod
    def mono_of(time_ns: int) -> int:
        """The monotonic time at which the wall clock read `time_ns` (no step in between)."""
        return time.monotonic_ns() - (time.time_ns() - time_ns)

    @staticmethod
    def corrected(mono_ns: int) -> int:
        """The true wall-clock time of a monotonic instant of this boot, once synchronized."""
        return time.time_ns() - (time.monotonic_ns() - mono_ns)
