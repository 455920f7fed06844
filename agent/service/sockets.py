"""Servers on unix sockets in the state directory that only the agent's user can reach.

One JSON document answers each connection (`edge-agent status` and `edge-agent relearn`
ask through them); the socket is made mode 0600 with no moment at which it is wider.
A server that cannot listen is logged and the agent runs on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

import structlog

log = structlog.get_logger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
"""The longest request line a server reads."""

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def listen_private(path: Path, serve: Serve) -> asyncio.Server:
    """A unix socket server only the agent's user (and root) can reach: created mode 0600,
    with no moment at which it is wider; a socket file left by a killed agent is replaced.
    Raises OSError."""
    with contextlib.suppress(FileNotFoundError):
        await asyncio.to_thread(path.unlink)
    old_umask = os.umask(0o177)
    try:
        return await asyncio.start_unix_server(serve, path=str(path), limit=MAX_REQUEST_BYTES)
    finally:
        os.umask(old_umask)


class PrivateServer:
    """A server on `path` (made by `listen_private`), an async context manager that listens
    on entry and closes on exit; a subclass says what it answers (`answer`, None for
    nothing) and what is lost without it."""

    failure_event = "socket_failed"
    failure_detail = "the agent runs on"
    client_gone_event = "socket_client_gone"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self) -> bool:
        """Listen; False (logged) when the socket cannot be made: the agent runs on without."""
        try:
            self._server = await listen_private(self.path, self._serve)
        except OSError as exc:
            log.error(self.failure_event, path=str(self.path), error=str(exc),
                      detail=self.failure_detail)
            return False
        return True

    async def answer(self, reader: asyncio.StreamReader) -> dict[str, Any] | None:
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            document = await self.answer(reader)
            if document is not None:
                writer.write(json.dumps(document).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError) as exc:  # the asker went away: its loss
            log.debug(self.client_gone_event, error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        """Stop listening and remove the socket file; again is a no-op."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path.unlink)
