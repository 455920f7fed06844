"""`edge-fleet`: the fleet side's commands (ingest, serve, completeness, remote configuration).

ingest, leave, serve, migrate, completeness, password; and the signed remote configuration:
keys new, config push, config status, command (docs/fleet.md).

Exit status 0 on success, 1 when the report finds unexplained gaps or a command fails,
2 for an invalid configuration file or usage (the same `file:line` messages as
`edge-agent check`), and for a message refused here before it was signed.
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
from typing import Any

import psycopg
import structlog

from agent.config.loader import ConfigError
from fleet.auth import hash_password
from fleet.completeness import completeness, format_report
from fleet.config import FleetConfig, load_fleet_config
from fleet.ingest import Ingest, leave
from fleet.remote import DEFAULT_EXPIRY_S, Refusal, write_key_pair
from fleet.remote_cli import push_config, send_command, show_config_status
from fleet.schema import migrate

DEFAULT_CONFIG = Path("/etc/edge-fleet/fleet.yaml")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    if args.command == "password":
        return _password()
    if args.command == "keys":
        return _keys_new(args.out)
    try:
        config = load_fleet_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 2
    if args.command == "config" and args.action == "push":
        return push_config(config, args.gateway, args.file, args.key, site=args.site,
                           version=args.version, expires_in_s=args.expires_in)
    if args.command == "config":
        return show_config_status(config, args.gateway, args.json)
    if args.command == "command":
        return send_command(config, args.gateway, args.words, args.key, site=args.site,
                            expires_in_s=args.expires_in)
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
        _config_option(sub)
        if name == "completeness":
            sub.add_argument("--gateway", help="only this gateway")
            sub.add_argument("--since", type=_utc, help="only events made since (ISO 8601, UTC "
                             "when no offset is given)")
            sub.add_argument("--json", action="store_true", help="one JSON document")
    _remote_parsers(commands)
    return parser


def _config_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("-c", "--config", type=Path,
                     default=Path(os.environ.get("EDGE_FLEET_CONFIG", DEFAULT_CONFIG)),
                     help=f"configuration file (default $EDGE_FLEET_CONFIG or {DEFAULT_CONFIG})")


def _remote_parsers(commands: Any) -> None:
    """keys new, config push, config status, command (docs/fleet.md, "Remote configuration")."""
    keys = commands.add_parser("keys", help="the key that signs configurations and commands")
    new = keys.add_subparsers(dest="action", required=True).add_parser(
        "new", help="make a signing key pair", description="Writes a new Ed25519 private key "
        "(mode 0600; never overwrites a file) and its public half beside it (PATH.pub).")
    new.add_argument("--out", type=Path, required=True, help="the private key's file")

    config = commands.add_parser("config", help="push a configuration to a gateway, or show "
                                 "what the gateways did with theirs")
    actions = config.add_subparsers(dest="action", required=True)
    push = actions.add_parser("push", help="sign a configuration file and send it to a gateway",
                              description="Checks FILE as the agent would, signs it and "
                              "publishes it (QoS 1) to the gateway's command topic; the gateway "
                              "applies it and answers with a config_applied, config_rejected "
                              "or config_rolled_back event.")
    push.add_argument("gateway")
    push.add_argument("file", type=Path, help="the gateway's whole configuration file")
    push.add_argument("--version", type=int, help="the version (default: one above the largest "
                      "known for the gateway)")
    status = actions.add_parser("status", help="per gateway: pushed, applied, last outcome")
    status.add_argument("gateway", nargs="?", help="only this gateway")
    status.add_argument("--json", action="store_true", help="one JSON document")

    command = commands.add_parser("command", help="send a signed command to a gateway",
                                  description="relearn DEVICE [RULE...], reload, status or "
                                  "buffer stats; the answer comes back as a command_answer "
                                  "event.")
    command.add_argument("gateway")
    command.add_argument("words", nargs="+", help="the command and its arguments")
    for sub in (push, command):
        sub.add_argument("--key", type=Path, required=True, help="the private key (keys new)")
        sub.add_argument("--site", help="the gateway's site (default: the one its events "
                         "arrive under)")
        sub.add_argument("--expires-in", type=_seconds, default=DEFAULT_EXPIRY_S,
                         metavar="SECONDS", help="refused by the gateway after this long "
                         "(default 7 days)")
    for sub in (push, status, command):
        _config_option(sub)


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 366 * 86400:
        raise argparse.ArgumentTypeError("between 0 and a year (in seconds)")
    return value


def _keys_new(out: Path) -> int:
    try:
        kid = write_key_pair(out)
    except Refusal as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 2
    public = out.with_name(out.name + ".pub")
    print(f"key id {kid}")
    print(f"private key {out} (mode 0600): it signs for the whole fleet; keep it off the "
          "gateways", file=sys.stderr)
    print(f"public key {public}: copy it to each gateway (say /etc/edge-agent/{public.name}) "
          "and put in its configuration:", file=sys.stderr)
    print(f"remote: {{enabled: true, trusted_keys: [/etc/edge-agent/{public.name}]}}")
    return 0


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
