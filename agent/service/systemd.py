"""Telling systemd how the service is doing: the sd_notify datagram protocol, spoken directly.

The unit runs the agent with `Type=notify`, `NotifyAccess=main` and `WatchdogSec=`: the
service counts as started at `READY=1` and is restarted when `WATCHDOG=1` stops. One
AF_UNIX datagram per message, newline-separated `KEY=value` lines, to `$NOTIFY_SOCKET` (a
leading '@': the abstract namespace). Spoken here so that the agent needs no libsystemd;
without `$NOTIFY_SOCKET` (run by hand, in tests) every call does nothing. The watchdog is
pinged from a task on the main event loop, never a thread: a hung loop must stop the pings.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """The service manager's notification socket, or nothing when there is none."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if raw.startswith("@"):
            self._address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self._address = raw
        elif raw:
            log.warning("systemd_notify_socket_unsupported", notify_socket=raw,
                        detail="only AF_UNIX paths and abstract names are supported")
        self._sock: socket.socket | None = None
        self._failed = False
        self.watchdog_interval_s = _watchdog_interval_s(env)
        """Half of `$WATCHDOG_USEC` when the watchdog is meant for this process, else None."""

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one message (`READY=1`, `STATUS=...`); whether it went out.

        Never blocks: the socket is non-blocking, and a full receive queue of the service
        manager loses this one message (logged), as libsystemd's sd_notify would fail too.
        """
        if self._address is None:
            return False
        message = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._failed:  # one line per fault, not one per watchdog ping
                log.warning("systemd_notify_failed", error=str(exc), message=lines[0])
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def reloading(self, status: str = "reloading the configuration") -> bool:
        # systemd >= 253 (Type=notify-reload) wants the monotonic time of the reload's start.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    async def watchdog(self) -> None:
        """Ping every `watchdog_interval_s` until cancelled (returns at once without a watchdog)."""
        interval = self.watchdog_interval_s
        if interval is None or self._address is None:
            return
        log.info("systemd_watchdog_enabled", interval_s=interval)
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """`$WATCHDOG_USEC / 2` in seconds, if set, positive, and `$WATCHDOG_PID` is absent or ours."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    try:
        value = int(usec)
        if pid and int(pid) != os.getpid():
            return None  # meant for another process (e.g. the one that exec'd us)
    except ValueError:
        log.warning("systemd_watchdog_invalid", watchdog_usec=usec, watchdog_pid=pid)
        return None
    return value / 2 / 1e6 if value > 0 else None
