"""Asking the running agent to do something: one JSON request, one JSON answer, over a unix
socket in the state directory (`<state_dir>/control.sock`).

A command that changes what the agent holds in memory (`edge-agent relearn`) must reach the
process: a file changed under it is overwritten at its next save, and a signal carries no
arguments and no answer. The socket is mode 0600 (the agent's user and root) and answers
one request per connection: a JSON object on one line, at most `MAX_REQUEST_BYTES`, read
within `REQUEST_TIMEOUT_S`; the answer has `ok` (and `error`, `exit` when not ok). A request
the handler fails on is answered and logged, and never stops the agent.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from agent.service.sockets import PrivateServer

log = structlog.get_logger(__name__)

CONTROL_SOCKET = "control.sock"
"""Its name in `gateway.state_dir`."""

REQUEST_TIMEOUT_S = 5.0

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def refusal(error: str, exit_code: int = 1) -> dict[str, Any]:
    """An answer saying no: `error` for a person, `exit` the command's exit status."""
    return {"ok": False, "error": error, "exit": exit_code}


class ControlServer(PrivateServer):
    """Answers each request on `path` with `handler(request)`."""

    failure_event = "control_socket_failed"
    failure_detail = "edge-agent relearn will refuse to run; the agent runs on"
    client_gone_event = "control_client_gone"

    def __init__(self, path: Path, handler: Handler) -> None:
        super().__init__(path)
        self._handler = handler

    async def answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                line = await reader.readline()
            request = json.loads(line)
        except TimeoutError:
            return refusal("no request within the time allowed", 2)
        except ValueError as exc:  # not JSON, or longer than the limit
            return refusal(f"not a request: {exc}", 2)
        if not isinstance(request, dict):
            return refusal("not a request: a JSON object is expected", 2)
        try:
            return await self._handler(request)
        except Exception as exc:  # a bug: answered and logged, the agent runs on
            log.exception("control_request_failed", command=request.get("command"))
            return refusal(f"the agent failed on it: {type(exc).__name__}: {exc}")


def ask(path: Path, request: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    """Send a request to the running agent and wait for its answer (blocking, for the command
    line). Raises FileNotFoundError or ConnectionRefusedError when no agent listens, another
    OSError, or ValueError for an answer that is not JSON (the agent was stopping)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer: dict[str, Any] = json.loads(b"".join(chunks))
    return answer
