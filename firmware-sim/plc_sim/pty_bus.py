"""A serial line without hardware: two pseudo-terminals joined back to back, like a null modem.

pymodbus's serial server opens a port by name (pyserial), and so does a
client; a single pty pair has only one side with a name (the master is just a
file descriptor). So the bus is two pairs, and the simulator copies bytes
between the two masters: the client opens `client_path`, the server
`server_path`. The bytes pass unchanged and in order; faults are injected by
the server, not here, so that TCP and serial share them.

Both slave ends are put in raw mode at once and held open by the bus: a
slave in the default cooked mode would echo the first request back to the
client before the server opened it, and a master whose slave has no opener
reads EIO.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


class PtyBus:
    """Two joined ptys; `link`, if given, becomes a symlink to the client's end."""

    def __init__(self, link: Path | None = None) -> None:
        self.link = link
        self._fds: list[int] = []
        self._masters: tuple[int, int] | None = None
        self.client_path = ""
        self.server_path = ""

    def open(self) -> None:
        loop = asyncio.get_running_loop()
        client_master, client_slave = os.openpty()
        server_master, server_slave = os.openpty()
        self._fds = [client_master, client_slave, server_master, server_slave]
        for fd in (client_slave, server_slave):
            tty.setraw(fd)
        for fd in (client_master, server_master):
            os.set_blocking(fd, False)
        self.client_path = os.ttyname(client_slave)
        self.server_path = os.ttyname(server_slave)
        self._masters = (client_master, server_master)
        loop.add_reader(client_master, self._copy, client_master, server_master)
        loop.add_reader(server_master, self._copy, server_master, client_master)
        if self.link is not None:
            if self.link.is_symlink():
                self.link.unlink()
            self.link.symlink_to(self.client_path)
        log.info("pty_bus_open", client=self.client_path, server=self.server_path,
                 link=str(self.link) if self.link else None)

    @property
    def path(self) -> str:
        """What a client opens: the symlink if there is one, else the pty's own name."""
        return str(self.link) if self.link is not None else self.client_path

    def _copy(self, source: int, target: int) -> None:
        try:
            data = os.read(source, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: the other side went away (only at shutdown)
            log.debug("pty_read_failed", error=str(exc))
            return
        try:
            os.write(target, data)
        except BlockingIOError:
            # The reader is not draining; a real line would lose these bytes too.
            log.warning("pty_bytes_dropped", count=len(data))

    def close(self) -> None:
        """Stop copying, close every descriptor, remove the symlink; safe to call twice."""
        if self._masters is not None:
            loop = asyncio.get_running_loop()
            for fd in self._masters:
                loop.remove_reader(fd)
            self._masters = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        if self.link is not None and self.link.is_symlink():
            self.link.unlink()
