"""`edge-fleet`: the fleet side's commands (ingest, serve, completeness, migrate, password).

Exit status 0 on success, 1 when the report finds unexplained gaps or a command fails,
2 for an invalid configuration file or usage (the same `file:line` messages as
`edge-agent check`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import getpass
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg
import structlog

from agent.config.loader import ConfigError
from fleet.auth import hash_password
from fleet.completeness import completeness, format_report
from fleet.config import FleetConfig, load_fleet_config
from fleet.ingest import Ingest, leave
from fleet.schema import migrate

DEFAULT_CONFIG = Path("/etc/edge-fleet/fleet.yaml")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    if args.command == "password":
        return _password()
    try:
        config = load_fleet_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 2
    if args.command == "ingest":
        return asyncio.run(_ingest(config))
    if args.command == "serve":
        return _serve(config, args.config)
    if args.command == "leave":
        if not asyncio.run(leave(config)):
            print(f"leave: no connection to {config.mqtt.host}", file=sys.stderr)
            return 1
        print(f"the session of {config.mqtt.client_id} has ended", file=sys.stderr)
        return 0
    if args.command == "migrate":
        with psycopg.connect(config.database.dsn.get_secret_value()) as conn:
            migrate(conn)
        print("the fleet database is up to date", file=sys.stderr)
        return 0
    return _completeness(config, args.gateway, args.since, args.json)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default="info")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("password", help="hash a password for serve.users (read from stdin)",
                        description="Reads a password (prompted on a terminal, else the "
                        "first line of stdin) and prints its scrypt hash for serve.users.")
    for name, text in (("ingest", "events from the broker into PostgreSQL, until stopped"),
                       ("leave", "end this ingest's session at the broker (retiring it)"),
                       ("serve", "the fleet view in a browser (serve: in the file)"),
                       ("migrate", "create or update the database's tables and views"),
                       ("completeness", "per gateway: what arrived, what is missing and why")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("-c", "--config", type=Path,
                         default=Path(os.environ.get("EDGE_FLEET_CONFIG", DEFAULT_CONFIG)),
                         help="configuration file (default $EDGE_FLEET_CONFIG or "
                         f"{DEFAULT_CONFIG})")
        if name == "completeness":
            sub.add_argument("--gateway", help="only this gateway")
            sub.add_argument("--since", type=_utc, help="only events made since (ISO 8601, UTC "
                             "when no offset is given)")
            sub.add_argument("--json", action="store_true", help="one JSON document")
    return parser


def _utc(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


async def _ingest(config: FleetConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Ingest(config) as ingest:
        task = asyncio.create_task(ingest.run())
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    t = ingest.totals
    structlog.get_logger(__name__).info("fleet_ingest_stopped", stored=t.stored,
                                        duplicates=t.duplicates, statuses=t.statuses,
                                        rejected=t.rejected)
    return 0


def _password() -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("password: the two entries differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 10:
        print("password: use at least 10 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def _serve(config: FleetConfig, path: Path) -> int:
    import uvicorn

    from fleet.web import make_app

    serve = config.serve
    if not serve.users:
        print(f"{path}: serve.users: give at least one login (its hash from "
              "`edge-fleet password`)", file=sys.stderr)
        return 2
    if (serve.tls_cert_file is None) != (serve.tls_key_file is None):
        print(f"{path}: serve: tls_cert_file and tls_key_file go together", file=sys.stderr)
        return 2
    server = uvicorn.Server(uvicorn.Config(
        make_app(config), host=serve.listen, port=serve.port, log_config=None,
        ssl_certfile=str(serve.tls_cert_file) if serve.tls_cert_file else None,
        ssl_keyfile=str(serve.tls_key_file) if serve.tls_key_file else None,
        proxy_headers=False, server_header=False))
    structlog.get_logger(__name__).info("fleet_serving", listen=serve.listen, port=serve.port,
                                        tls=serve.tls_cert_file is not None)
    server.run()
    return 0


def _completeness(config: FleetConfig, gateway: str | None, since: dt.datetime | None,
                  as_json: bool) -> int:
    with psycopg.connect(config.database.dsn.get_secret_value()) as conn:
        reports = completeness(conn, gateway, since)
    if as_json:
        print(json.dumps([r.as_dict() for r in reports], indent=1))
    else:
        for report in reports:
            print("\n".join(format_report(report)))
        if not reports:
            print("no events received yet" + (f" from {gateway}" if gateway else ""))
    return 1 if any(r.unexplained() for r in reports) else 0


def _configure_logging(level: str) -> None:
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
