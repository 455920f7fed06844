"""The control channel: a test switches faults on a running `plc-sim` over a TCP socket.

Protocol: one JSON object per line in, one JSON object per line out, on a
loopback port (`--control-port`). A request names a fault kind and its
options (see `plc_sim.link_faults`), and optionally the endpoint it is for
(`modbus-tcp`, `modbus-rtu-tcp`, `modbus-rtu`; default: every endpoint):

    {"fault": "delay", "seconds": 2}
    {"fault": "exception", "code": 2, "table": "input", "first": 0, "last": 9}
    {"fault": "refuse", "endpoint": "modbus-tcp"}
    {"fault": "none"}

The answer is `{"ok": true, "endpoints": [...]}` once the fault is in force on
those endpoints (for `refuse`: the listener is closed), or
`{"ok": false, "error": "..."}` and nothing changed.

The OPC UA side (`--opcua-port`) takes its faults by name, those of
`plc_sim.opcua_server.OpcUaSimServer`:

    {"opcua": "drop_publish_responses"}
    {"opcua": "answer_publish_requests"}

(also `stall_subscriptions`, `expire_subscriptions`, `announce_shutdown`); the
answer is `{"ok": true, "opcua": NAME, "count": N}`, N what the fault touched
(connections or subscriptions), once it is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from plc_sim.link_faults import Fault
from plc_sim.modbus_server import ModbusSimServer

if TYPE_CHECKING:
    from plc_sim.opcua_server import OpcUaSimServer

log = structlog.get_logger(__name__)

MAX_LINE_BYTES = 4096
OPCUA_FAULTS = ("drop_publish_responses", "answer_publish_requests", "stall_subscriptions",
                "expire_subscriptions", "announce_shutdown")


class ControlServer:
    """Applies fault requests to the endpoints it was given, by protocol name."""

    def __init__(self, endpoints: Mapping[str, ModbusSimServer], host: str, port: int = 0) -> None:
        self.endpoints = dict(endpoints)
        self.host = host
        self.requested_port = port
        self._server: asyncio.Server | None = None
        self._lock = asyncio.Lock()
        self.opcua: OpcUaSimServer | None = None
        """The OPC UA server, once started (`--opcua-port`): `{"opcua": ...}` requests."""

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._serve_client, self.host, self.requested_port, limit=MAX_LINE_BYTES
        )
        port: int = self._server.sockets[0].getsockname()[1]
        log.info("control_listening", host=self.host, port=port)
        return port

    async def apply(self, request: object) -> dict[str, object]:
        """Handle one request; the answer to send back."""
        if isinstance(request, dict) and "opcua" in request:
            return await self._apply_opcua(request["opcua"])
        try:
            if not isinstance(request, dict) or "fault" not in request:
                raise ValueError('expected a JSON object with a "fault" (or "opcua") key')
            fault = Fault.from_json(request)
            targets = self._targets(request.get("endpoint"))
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        async with self._lock:  # two clients switching at once: one after the other
            for name in targets:
                await self.endpoints[name].set_fault(fault)
        return {"ok": True, "endpoints": targets, "fault": fault.as_json()}

    async def _apply_opcua(self, name: object) -> dict[str, object]:
        if self.opcua is None:
            return {"ok": False, "error": "this simulator serves no OPC UA (--opcua-port)"}
        if name not in OPCUA_FAULTS:
            return {"ok": False, "error": f"no OPC UA fault {name!r}; known: "
                    + ", ".join(OPCUA_FAULTS)}
        async with self._lock:
            result = getattr(self.opcua, str(name))()
            count = await result if asyncio.iscoroutine(result) else result
        return {"ok": True, "opcua": name, "count": count}

    def _targets(self, endpoint: object) -> list[str]:
        if endpoint is None:
            return sorted(self.endpoints)
        if endpoint not in self.endpoints:
            known = ", ".join(sorted(self.endpoints))
            raise ValueError(f"no endpoint {endpoint!r}; this simulator serves: {known}")
        return [str(endpoint)]

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                except ValueError as exc:
                    answer: dict[str, object] = {"ok": False, "error": f"not JSON: {exc}"}
                else:
                    answer = await self.apply(request)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log.info("control_client_dropped", error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
