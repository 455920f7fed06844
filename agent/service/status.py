"""The gateway's vital signs: one snapshot for the `heartbeat` event and `edge-agent status`.

Both say the same thing, from the same function, so that what an operator sees on site
(`edge-agent status`) is what the cloud sees in the heartbeat. The snapshot is built from
what the supervisor already knows (device statuses, the uplink's state) and the store's
own statistics; nothing here touches a device or the broker.

`edge-agent status` reads it from a unix socket in the state directory: the agent writes
one JSON document to each connection and closes it. The socket is created mode 0600, so
only the agent's user (and root) can read the gateway's state.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from agent import __version__
from agent.service.sockets import PrivateServer
from agent.store import StoreStats

log = structlog.get_logger(__name__)

STATUS_SOCKET = "status.sock"
"""Its name in `gateway.state_dir`."""

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def process_usage() -> tuple[float, int]:
    """CPU seconds (user + system, every thread) and resident bytes of this process.

    `time.process_time` is the process's CPU clock (CLOCK_PROCESS_CPUTIME_ID); the RSS is
    the second field of /proc/self/statm, in pages (0 where there is no /proc).
    """
    cpu_s = time.process_time()
    try:
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        rss = 0
    return cpu_s, rss


def heartbeat_data(
    *,
    reason: str,
    uptime_s: float,
    config_sha256: str,
    devices: Mapping[str, tuple[str, str]],
    stats: StoreStats,
    pending: int,
    uplink_state: str,
    uplink_error: str,
    inflight: int,
    cpu_s: float,
    rss_bytes: int,
    now_ns: int,
    bytes_written: int = 0,
    bytes_written_per_day: float = 0.0,
    windows_lost: int = 0,
) -> dict[str, Any]:
    """The `heartbeat` event's data (docs/events.md). `devices`: name -> (status, reason);
    `windows_lost`: device windows power cuts lost (`windows_lost` events), ever."""
    oldest = stats.oldest_time_ns
    return {
        "reason": reason,
        "uptime_s": round(uptime_s, 3),
        "version": __version__,
        "config_sha256": config_sha256,
        "devices": {name: {"status": status, "reason": why}
                    for name, (status, why) in devices.items()},
        "store": {
            "id": stats.store_id,
            "depth": stats.depth,
            "pending": pending,
            "oldest_age_s": None if oldest is None else round(max(0, now_ns - oldest) / 1e9, 3),
            "bytes": stats.bytes,
            "last_seq": stats.last_seq,
            "dropped": dict(stats.dropped),
            "compacted": stats.compacted,
            "bytes_written": bytes_written,
            "bytes_written_per_day": round(bytes_written_per_day),
        },
        "uplink": {"state": uplink_state, "last_error": uplink_error, "inflight": inflight},
        "process": {"cpu_s": round(cpu_s, 3), "rss_bytes": rss_bytes},
        "windows_lost": windows_lost,
    }


Snapshot = Callable[[], Awaitable[dict[str, Any]]]


class StatusServer(PrivateServer):
    """Serves `snapshot()` as one JSON document per connection on `<state_dir>/status.sock`."""

    failure_event = "status_socket_failed"
    failure_detail = "edge-agent status will not work; the agent runs on"
    client_gone_event = "status_client_gone"

    def __init__(self, path: Path, snapshot: Snapshot) -> None:
        super().__init__(path)
        self._snapshot = snapshot

    async def answer(self, reader: asyncio.StreamReader) -> dict[str, Any] | None:
        try:
            return await self._snapshot()
        except RuntimeError as exc:  # asked while the agent stops: the store is closing
            log.warning("status_unavailable", error=str(exc))
            return None


def read_status(path: Path, timeout_s: float = 5.0) -> dict[str, Any]:
    """Ask a running agent (blocking: for the command line). Raises OSError when none answers."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    document: dict[str, Any] = json.loads(b"".join(chunks))
    return document


def format_status(doc: Mapping[str, Any]) -> list[str]:
    """`edge-agent status` for a person: one fact per line."""
    store, uplink, proc = doc["store"], doc["uplink"], doc["process"]
    oldest = store["oldest_age_s"]
    gateway = (f"gateway      {doc.get('gateway', '?')} (pid {doc.get('pid', '?')}, "
               f"version {doc['version']}, up {_duration(doc['uptime_s'])})")
    error = f"; last error: {uplink['last_error']}" if uplink["last_error"] else ""
    age = "-" if oldest is None else _duration(oldest)
    waiting = (f"store        {store['depth']} events waiting ({store['pending']} not yet on "
               f"disk), oldest {age} ago, {store['bytes']} bytes")
    losses = (f"             {sum(store['dropped'].values())} dropped, {store['compacted']} "
              f"compacted since the store was created; {doc.get('windows_lost', 0)} device "
              "windows lost to power cuts")
    wear = (f"             {store.get('bytes_written', 0)} bytes written to disk since the start "
            f"(about {store.get('bytes_written_per_day', 0) / 1e6:.1f} MB a day)")
    lines = [
        gateway,
        f"config       {doc.get('config', '?')} (sha256 {doc['config_sha256'][:12]})",
        f"uplink       {uplink['state']}, {uplink['inflight']} in flight{error}",
        *([(f"remote       configuration version {doc['remote']['config_version']}, "
           f"{doc['remote']['refused']} messages refused since the start")]
          if doc.get("remote") else []),
        waiting,
        losses,
        wear,
        f"process      {proc['cpu_s']:.1f} s CPU, {proc['rss_bytes'] / 2**20:.1f} MiB resident",
        "devices",
    ]
    learning = doc.get("detectors", {})
    paused = doc.get("paused", {})
    for name, device in doc["devices"].items():
        why = f" ({device['reason']})" if device["reason"] else ""
        lines.append(f"  {name:<20} {device['status']}{why}{_learning(learning.get(name))}"
                     f"{_paused(paused.get(name))}")
    return lines


def _paused(waiting: Mapping[str, str] | None) -> str:
    """`; waiting for pump in running: vib, agree` (rules with `while_states` not running)."""
    if not waiting:
        return ""
    by_gate: dict[str, list[str]] = {}
    for rule, gate in waiting.items():
        by_gate.setdefault(gate, []).append(rule)
    return "".join(f"; waiting for {gate}: {', '.join(rules)}" for gate, rules in by_gate.items())


def _learning(progress: Mapping[str, Any] | None) -> str:
    """`; rules learned since ... (age)` for a device whose rules learn (`KeepLearned.progress`)."""
    if not progress:
        return ""
    since = progress["since"]
    if since is None:  # learned, by an agent that did not record when
        return f"; rules {progress['state']} (since when: not recorded, saved by an earlier version)"
    age = time.time() - dt.datetime.fromisoformat(since).timestamp()
    text = f"; rules {progress['state']} since {since} ({_duration(max(0.0, age))} ago)"
    if progress["state"] == "learning":
        warming = [f"{rule or 'rules'} {w['seen']} of {w['needed']} warm-up {w['unit']}"
                   for rule, info in progress.get("rules", {}).items()
                   if (w := info.get("warmup"))]
        text += ": " + ", ".join(warming) if warming else (
            f", {progress['learned_rows']} of {progress['rows']} baselines learned")
    return text


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"
