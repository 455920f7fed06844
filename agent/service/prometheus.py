"""The heartbeat's numbers as a Prometheus text endpoint (`health.prometheus_port`, off by default).

For sites that already scrape their machines: the same snapshot as the `heartbeat` event
and `edge-agent status`, in the text exposition format (version 0.0.4), on
`GET /metrics`. A deliberately small HTTP/1.0 responder on asyncio streams rather than a
web framework or prometheus_client (whose server runs in its own thread): one request per
connection, headers bounded in size and time, nothing else served. Bound to 127.0.0.1
unless `health.prometheus_host` says otherwise, since the numbers name devices and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Self, get_args

import structlog

from agent.uplink.link import LinkState

log = structlog.get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REQUEST_TIMEOUT_S = 5.0
_MAX_HEADER_BYTES = 8192

Snapshot = Callable[[], Awaitable[dict[str, Any]]]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def render(snapshot: Mapping[str, Any], gateway: str) -> str:
    """The snapshot (`agent.service.status.heartbeat_data`) as exposition-format text."""
    store, uplink, proc = snapshot["store"], snapshot["uplink"], snapshot["process"]
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str,
               samples: Iterator[tuple[Mapping[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{_labels(labels)} {float(value)!r}")

    def one(value: float) -> Iterator[tuple[Mapping[str, str], float]]:
        yield {}, value

    info = {"gateway": gateway, "version": snapshot["version"],
            "config_sha256": snapshot["config_sha256"]}
    metric("edge_agent_info", "gauge", "The agent's version and configuration.",
           iter([(info, 1.0)]))
    metric("edge_agent_uptime_seconds", "gauge", "Seconds since the agent started.",
           one(snapshot["uptime_s"]))
    devices = snapshot["devices"]
    metric("edge_agent_device_up", "gauge", "1 when the device's reads succeed (also when degraded).",
           iter([({"device": name}, 1.0 if d["status"] in ("up", "degraded") else 0.0)
                 for name, d in devices.items()]))
    metric("edge_agent_store_depth", "gauge", "Stored events not yet acknowledged by the broker.",
           one(store["depth"]))
    metric("edge_agent_store_pending", "gauge", "Events accepted but not yet committed.",
           one(store["pending"]))
    oldest = store["oldest_age_s"]
    metric("edge_agent_store_oldest_age_seconds", "gauge",
           "Age of the oldest stored event (0 when the store is empty).",
           one(0.0 if oldest is None else oldest))
    metric("edge_agent_store_bytes", "gauge", "Event bytes stored.", one(store["bytes"]))
    metric("edge_agent_store_last_seq", "gauge", "The highest sequence number committed.",
           one(store["last_seq"]))
    metric("edge_agent_store_dropped_total", "counter",
           "Events dropped by the store since it was created, per kind.",
           iter([({"kind": k}, float(v)) for k, v in sorted(store["dropped"].items())]))
    metric("edge_agent_store_written_bytes_total", "counter",
           "Bytes the store wrote to disk since the agent started (card wear).",
           one(store.get("bytes_written", 0)))
    metric("edge_agent_store_written_bytes_per_day", "gauge",
           "The store's bytes written to disk, as a rate per day since the agent started.",
           one(store.get("bytes_written_per_day", 0)))
    metric("edge_agent_store_compacted_total", "counter",
           "Window events merged into others since the store was created.",
           one(store["compacted"]))
    metric("edge_agent_windows_lost_total", "counter",
           "Device windows open at a power cut, named at the next start (windows_lost), ever.",
           one(snapshot.get("windows_lost", 0)))
    remote = snapshot.get("remote")
    if remote is not None:
        metric("edge_agent_remote_config_version", "gauge",
               "The last remote configuration version accepted (docs/remote-config.md).",
               one(remote["config_version"]))
        metric("edge_agent_remote_refused_total", "counter",
               "Signed messages refused since the agent started (config_rejected).",
               one(remote["refused"]))
    metric("edge_agent_uplink_state", "gauge", "1 for the MQTT link's current state.",
           iter([({"state": s}, 1.0 if s == uplink["state"] else 0.0)
                 for s in get_args(LinkState)]))
    metric("edge_agent_uplink_inflight", "gauge", "Messages published awaiting their PUBACK.",
           one(uplink["inflight"]))
    metric("process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.",
           one(proc["cpu_s"]))
    metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
           one(proc["rss_bytes"]))
    return "\n".join(lines) + "\n"


class MetricsServer:
    def __init__(self, host: str, port: int, snapshot: Snapshot, gateway: str) -> None:
        self.host, self.port = host, port
        self._snapshot = snapshot
        self._gateway = gateway
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self) -> bool:
        """Listen; False (logged) when the port cannot be had: the agent runs on without it."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            log.error("prometheus_listen_failed", host=self.host, port=self.port, error=str(exc))
            return False
        log.info("prometheus_listening", host=self.host, port=self.port)
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEADER_BYTES:
                raise ValueError("header too large")
            method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if method not in ("GET", "HEAD"):
                await self._respond(writer, "405 Method Not Allowed", "only GET\n")
            elif target.split("?", 1)[0] != "/metrics":
                await self._respond(writer, "404 Not Found", "see /metrics\n")
            else:
                body = render(await self._snapshot(), self._gateway)
                await self._respond(writer, "200 OK", body, head_only=method == "HEAD")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, ConnectionError) as exc:
            log.debug("prometheus_bad_request", error=str(exc) or type(exc).__name__)
        except RuntimeError as exc:  # scraped while the agent stops: the store is closing
            log.warning("prometheus_unavailable", error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: str, body: str, *,
                       head_only: bool = False) -> None:
        data = body.encode()
        writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode())
        if not head_only:
            writer.write(data)
        await writer.drain()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
