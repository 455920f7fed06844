"""The remote configuration of each gateway as the database knows it: what was pushed, what the
gateway made of it, and the change it last applied.

Pushes are rows of `config_pushes` (`edge-fleet config push` writes them once the broker has
the message); outcomes are the gateway's own events, ingested like any other:
`config_applied` (version, sha256, previous_sha256), `config_rejected` (reason, detail,
problems), `config_rolled_back` (the version given up, restored_sha256). A rejection of a
message the gateway could not open carries no version: it counts for configurations too
(unless it says it was a command), since it may have been one. Blocking functions over one
connection: the command line calls them, the fleet view from a worker thread.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from agent.events import (
    CONFIG_APPLIED,
    CONFIG_REJECTED,
    CONFIG_ROLLED_BACK,
    GATEWAY_DEVICE,
    HEARTBEAT,
)

Conn = psycopg.Connection[tuple[Any, ...]]

OUTCOMES = {CONFIG_APPLIED: "applied", CONFIG_REJECTED: "rejected",
            CONFIG_ROLLED_BACK: "rolled back"}
_OWN = f"device = '{GATEWAY_DEVICE}'"
_KINDS = f"kind IN ('{CONFIG_APPLIED}', '{CONFIG_REJECTED}', '{CONFIG_ROLLED_BACK}')"
_CONFIG_OUTCOME = (
    f"gateway = %(gateway)s AND {_OWN} AND {_KINDS} "
    f"AND (kind <> '{CONFIG_REJECTED}' OR data->>'type' IS DISTINCT FROM 'command' "
    "     OR jsonb_typeof(data->'version') IS DISTINCT FROM 'number')")
"""A gateway's events about configurations (a rejected command's are not)."""


@dataclass(frozen=True, slots=True)
class Push:
    gateway: str
    version: int
    sha256: str
    yaml: str
    key_id: str
    expires_at: dt.datetime


def record_push(conn: Conn, push: Push) -> None:
    """Kept (in the caller's transaction); a version pushed again (`--version`) replaces its row."""
    conn.execute(
        "INSERT INTO config_pushes (gateway, version, sha256, yaml, key_id, expires_at) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (gateway, version) DO UPDATE SET "
        "sha256 = EXCLUDED.sha256, yaml = EXCLUDED.yaml, key_id = EXCLUDED.key_id, "
        "pushed_at = now(), expires_at = EXCLUDED.expires_at",
        (push.gateway, push.version, push.sha256, push.yaml, push.key_id, push.expires_at))


def lock_gateway(conn: Conn, gateway: str) -> None:
    """Until the transaction ends: two pushes to one gateway at once would pick one version."""
    conn.execute("SELECT pg_advisory_xact_lock(727002, hashtext(%s))", (gateway,))


def largest_version(conn: Conn, gateway: str) -> int | None:
    """The largest configuration version known for the gateway: pushed from here, or named
    by its events (a version another fleet host pushed, or the one it runs)."""
    row = conn.execute(
        "SELECT greatest((SELECT max(version) FROM config_pushes WHERE gateway = %(gateway)s), "
        f"(SELECT max((data->>'version')::bigint) FROM events WHERE {_CONFIG_OUTCOME} "
        "  AND jsonb_typeof(data->'version') = 'number'))", {"gateway": gateway}).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def site_of(conn: Conn, gateway: str) -> str | None:
    """The site the gateway's events arrived under: the first level of their topic (the
    agents' `{site}/{gateway}/{device}/{kind}`, as the ingest subscribes to it), from its
    latest heartbeat, else its latest event of any kind."""
    for kind_clause in (f"AND kind = '{HEARTBEAT}' AND {_OWN}", ""):
        row = conn.execute(
            "SELECT split_part(topic, '/', 1) FROM events WHERE gateway = %s "
            f"{kind_clause} AND split_part(topic, '/', 2) = gateway "
            "AND split_part(topic, '/', 1) <> '' ORDER BY time DESC LIMIT 1",
            (gateway,)).fetchone()
        if row is not None:
            return str(row[0])
    return None


@dataclass
class Outcome:
    """One thing that happened to a gateway's configuration, pushed or reported."""

    time: dt.datetime
    what: str
    """`pushed`, `applied`, `rejected` or `rolled back`."""
    version: int | None
    sha256: str
    reason: str = ""
    detail: str = ""
    problems: list[str] = field(default_factory=list)


@dataclass
class ConfigStatus:
    gateway: str
    pushed_version: int | None = None
    pushed_at: dt.datetime | None = None
    applied_version: int | None = None
    """The version running by the gateway's events: the last applied, or after a rollback
    the one restored (None when that is the gateway's own file, never pushed from here)."""
    applied_sha256: str = ""
    applied_at: dt.datetime | None = None
    last: Outcome | None = None
    """The gateway's latest answer about a configuration."""
    running_sha256: str = ""
    """What its latest heartbeat or status message says it runs..."""
    running_at: dt.datetime | None = None
    """... and when it said so."""

    @property
    def runs_other(self) -> bool:
        """Whether the gateway said, after the last change applied, that it runs another file
        (changed on the gateway itself, say)."""
        return bool(self.running_sha256 and self.applied_sha256
                    and self.running_sha256 != self.applied_sha256
                    and self.running_at is not None and self.applied_at is not None
                    and self.running_at >= self.applied_at)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("pushed_at", "applied_at", "running_at"):
            out[key] = out[key].isoformat() if out[key] else None
        if out["last"]:
            out["last"]["time"] = out["last"]["time"].isoformat()
        return out


def outcomes(conn: Conn, gateway: str, limit: int = 50) -> list[Outcome]:
    """The gateway's pushes and what it answered, newest first."""
    rows = conn.execute(
        "(SELECT pushed_at, 'pushed', version, sha256, NULL::jsonb FROM config_pushes "
        " WHERE gateway = %(gateway)s ORDER BY pushed_at DESC LIMIT %(limit)s) UNION ALL "
        f"(SELECT time, kind, NULL, NULL, data FROM events WHERE {_CONFIG_OUTCOME} "
        " ORDER BY time DESC LIMIT %(limit)s) ORDER BY 1 DESC LIMIT %(limit)s",
        {"gateway": gateway, "limit": limit}).fetchall()
    return [_outcome(*row) for row in rows]


def _outcome(time: dt.datetime, kind: str, version: int | None, sha256: str | None,
             data: dict[str, Any] | None) -> Outcome:
    if data is None:
        return Outcome(time, kind, version, sha256 or "")
    number = data.get("version")
    reported = number if isinstance(number, int) and not isinstance(number, bool) else None
    problems = data.get("problems") or []
    return Outcome(time, OUTCOMES.get(kind, kind), reported, str(data.get("sha256") or ""),
                   reason=str(data.get("reason") or ""), detail=_detail(kind, data),
                   problems=[str(p) for p in problems] if isinstance(problems, list) else [])


def _detail(kind: str, data: dict[str, Any]) -> str:
    """What a person reads beside the outcome: the refusal's text, the devices that did not
    come back, what applying changed."""
    if kind == CONFIG_APPLIED:
        parts = [f"{what}: {', '.join(map(str, data[what]))}" for what in ("started", "stopped")
                 if data.get(what)]
        parts += ["MQTT reconnected"] if data.get("mqtt_restarted") else []
        return "; ".join(parts) or "no device started or stopped"
    if kind == CONFIG_ROLLED_BACK and data.get("devices_down"):
        return "devices down: " + ", ".join(map(str, data["devices_down"]))
    return str(data.get("detail") or "")


def config_status(conn: Conn, gateway: str | None = None) -> list[ConfigStatus]:
    """Each gateway that was pushed to or reported a configuration outcome (or `gateway`)."""
    if gateway is None:
        names = [str(r[0]) for r in conn.execute(
            "SELECT gateway FROM config_pushes UNION SELECT DISTINCT gateway FROM events "
            f"WHERE {_KINDS} ORDER BY 1").fetchall()]
    else:
        names = [gateway]
    return [_status(conn, name) for name in names]


def _status(conn: Conn, gateway: str) -> ConfigStatus:
    status = ConfigStatus(gateway)
    pushed = conn.execute("SELECT version, pushed_at FROM config_pushes WHERE gateway = %s "
                          "ORDER BY pushed_at DESC, version DESC LIMIT 1", (gateway,)).fetchone()
    if pushed is not None:
        status.pushed_version, status.pushed_at = int(pushed[0]), pushed[1]
    last = conn.execute(f"SELECT time, kind, NULL, NULL, data FROM events WHERE {_CONFIG_OUTCOME} "
                        "ORDER BY time DESC LIMIT 1", {"gateway": gateway}).fetchone()
    status.last = _outcome(*last) if last is not None else None
    applied = conn.execute(
        f"SELECT time, data FROM events WHERE gateway = %s AND {_OWN} "
        f"AND kind IN ('{CONFIG_APPLIED}', '{CONFIG_ROLLED_BACK}') ORDER BY time DESC LIMIT 1",
        (gateway,)).fetchone()
    if applied is not None:
        at, data = applied
        if "restored_sha256" in data:  # rolled back: the file restored runs again
            status.applied_sha256 = str(data.get("restored_sha256") or "")
            status.applied_version = version_of(conn, gateway, status.applied_sha256)
        else:
            status.applied_sha256 = str(data.get("sha256") or "")
            status.applied_version = _int(data.get("version"))
        status.applied_at = at
    beat = conn.execute(  # the newer of its latest heartbeat and its status message
        "SELECT sha, at FROM ("
        "(SELECT data->>'config_sha256' AS sha, time AS at FROM events WHERE gateway = %(g)s "
        f" AND kind = '{HEARTBEAT}' AND {_OWN} ORDER BY time DESC LIMIT 1) UNION ALL "
        "(SELECT config_sha256, time FROM gateway_status WHERE gateway = %(g)s)) said "
        "WHERE coalesce(sha, '') <> '' ORDER BY at DESC LIMIT 1", {"g": gateway}).fetchone()
    if beat is not None:
        status.running_sha256, status.running_at = str(beat[0]), beat[1]
    return status


def version_of(conn: Conn, gateway: str, sha256: str) -> int | None:
    """The version a file of this hash was applied or pushed as (the latest such), if any."""
    row = conn.execute(
        "SELECT greatest("
        "(SELECT max((data->>'version')::bigint) FROM events WHERE gateway = %(g)s "
        f" AND {_OWN} AND kind = '{CONFIG_APPLIED}' AND data->>'sha256' = %(s)s "
        " AND jsonb_typeof(data->'version') = 'number'), "
        "(SELECT max(version) FROM config_pushes WHERE gateway = %(g)s AND sha256 = %(s)s))",
        {"g": gateway, "s": sha256}).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class Change:
    """The gateway's last applied configuration against the one it replaced."""

    version: int | None
    sha256: str
    previous_version: int | None
    previous_sha256: str
    diff: list[str]
    """Unified diff lines (no line ends); empty when either text is unknown here."""
    missing: str = ""
    """Why there is no diff: which text was never pushed from here."""


def last_change(conn: Conn, gateway: str) -> Change | None:
    """The last `config_applied`'s change as a unified diff, the texts from `config_pushes`
    (looked up by hash: what the gateway applied is what it says it applied)."""
    row = conn.execute(
        f"SELECT data FROM events WHERE gateway = %s AND {_OWN} "
        f"AND kind = '{CONFIG_APPLIED}' ORDER BY time DESC LIMIT 1", (gateway,)).fetchone()
    if row is None:
        return None
    data = row[0]
    new_sha, old_sha = str(data.get("sha256") or ""), str(data.get("previous_sha256") or "")
    texts = {}
    for sha in (new_sha, old_sha):
        found = conn.execute("SELECT version, yaml FROM config_pushes WHERE gateway = %s "
                             "AND sha256 = %s ORDER BY pushed_at DESC LIMIT 1",
                             (gateway, sha)).fetchone()
        if found is not None:
            texts[sha] = (int(found[0]), str(found[1]))
    version = _int(data.get("version"))
    previous = version_of(conn, gateway, old_sha) if old_sha else None
    missing = [f"{what} ({sha[:12] or 'unknown'})" for what, sha in
               (("the applied file", new_sha), ("the file it replaced", old_sha))
               if sha not in texts]
    if missing:
        return Change(version, new_sha, previous, old_sha, [],
                      missing=" and ".join(missing) + " never pushed from here")
    old_name = f"version {previous if previous is not None else '?'} ({old_sha[:12]})"
    new_name = f"version {version if version is not None else '?'} ({new_sha[:12]})"
    diff = [line.rstrip("\n") for line in difflib.unified_diff(
        texts[old_sha][1].splitlines(keepends=True), texts[new_sha][1].splitlines(keepends=True),
        fromfile=old_name, tofile=new_name)]
    return Change(version, new_sha, previous, old_sha, diff)


def format_table(statuses: Sequence[ConfigStatus]) -> list[str]:
    """`edge-fleet config status`: a row per gateway, then the reasons at length."""
    head = ("gateway", "pushed", "applied", "sha256", "running", "last", "reason", "at")
    rows = [head]
    for s in statuses:
        last = s.last
        applied = (str(s.applied_version) if s.applied_version is not None
                   else "own file" if s.applied_sha256 else "-")
        running = ("-" if not s.running_sha256 else "same" if s.running_sha256 == s.applied_sha256
                   else s.running_sha256[:12] if s.runs_other or not s.applied_sha256
                   else "not yet said")
        rows.append((s.gateway, "-" if s.pushed_version is None else str(s.pushed_version),
                     applied, s.applied_sha256[:12] or "-", running,
                     "-" if last is None else f"{last.what} "
                     f"{last.version if last.version is not None else '?'}",
                     (last.reason or "-") if last else "-", _when(last.time if last else None)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    for s in statuses:
        if s.last is not None and (s.last.detail or s.last.problems):
            lines.append(f"{s.gateway}: {s.last.what} {s.last.version or ''}: "
                         f"{s.last.detail}".replace("  ", " ").rstrip(": "))
            lines += [f"  {problem}" for problem in s.last.problems]
    return lines


def _when(moment: dt.datetime | None) -> str:
    return f"{moment.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC" if moment else "-"
