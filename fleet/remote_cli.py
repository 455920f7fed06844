"""`edge-fleet config push`, `edge-fleet command`, `edge-fleet config status`: check, sign,
publish, record, and read back what the gateways answered.

A push is recorded only once the broker acknowledged the message, in the transaction that
chose its version (with a per-gateway lock): two operators pushing to one gateway at once
get two versions, never one twice. Exit status 2 for anything refused here before it was
signed (the problems listed), 1 when the broker or the database failed.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg

from agent.config.signed import KeyFileError, key_id, load_private_key, sign
from fleet.config import FleetConfig
from fleet.config_history import (
    Push,
    config_status,
    format_table,
    largest_version,
    lock_gateway,
    record_push,
    site_of,
)
from fleet.publish import PublishError, publish
from fleet.remote import (
    Refusal,
    check_command,
    check_config,
    choose_version,
    command_body,
    command_topic,
    config_body,
)
from fleet.schema import migrate

_FAILURES = (KeyFileError, Refusal, PublishError, psycopg.Error)


def _failed(what: str, exc: Exception) -> int:
    """Say why `what` did not go, and its exit status: 2 refused here, 1 broker or database."""
    if isinstance(exc, KeyFileError | Refusal):
        print("\n".join(exc.lines if isinstance(exc, Refusal) else [str(exc)]), file=sys.stderr)
        return 2
    if isinstance(exc, PublishError):
        print(f"{what}: not sent: {exc}", file=sys.stderr)
    else:
        print(f"{what}: the fleet database: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


def push_config(config: FleetConfig, gateway: str, file: Path, key_path: Path, *,
                site: str | None, version: int | None, expires_in_s: float) -> int:
    try:
        key = load_private_key(key_path)
        checked = check_config(file, gateway)
        pattern = config.mqtt.command_topic
        if checked.topic != pattern:
            raise Refusal(f"{file}: remote.topic is {checked.topic!r} but this fleet publishes "
                          f"to mqtt.command_topic {pattern!r}: the gateway would not receive "
                          "it (make them the same)")
        with psycopg.connect(config.database.dsn.get_secret_value()) as conn:
            migrate(conn)
            with conn.transaction():
                lock_gateway(conn, gateway)
                known = largest_version(conn, gateway)
                chosen = choose_version(known, version)
                where = site or site_of(conn, gateway)
                topic = command_topic(pattern, gateway, where)
                body = config_body(gateway, chosen, checked.text, expires_in_s)
                publish(config, topic, sign(body, key))
                expires = dt.datetime.fromtimestamp(body["expires_ns"] / 1e9, dt.UTC)
                record_push(conn, Push(gateway, chosen, checked.sha256, checked.text,
                                       key_id(key.public_key()), expires))
    except _FAILURES as exc:
        return _failed("config push", exc)
    if known is not None and chosen <= known:
        print(f"note: version {chosen} is not above {known}, the largest known for {gateway}: "
              "the gateway refuses it (replayed) unless its own last version is lower",
              file=sys.stderr)
    if site is None and where is not None and where != checked.site:
        print(f"note: {file} says gateway.site {checked.site!r}; {gateway}'s events arrive "
              f"under {where!r}, so it went to {topic}", file=sys.stderr)
    print(f"pushed version {chosen} (sha256 {checked.sha256[:12]}) to {gateway} on {topic}, "
          f"valid until {expires:%Y-%m-%d %H:%M} UTC; its answer: edge-fleet config status "
          f"{gateway}")
    return 0


def send_command(config: FleetConfig, gateway: str, words: Sequence[str], key_path: Path, *,
                 site: str | None, expires_in_s: float) -> int:
    try:
        command = check_command(words)
        key = load_private_key(key_path)
        pattern = config.mqtt.command_topic
        if site is None and "{site}" in pattern:
            with psycopg.connect(config.database.dsn.get_secret_value()) as conn:
                site = site_of(conn, gateway)
        topic = command_topic(pattern, gateway, site)
        body = command_body(gateway, command, expires_in_s)
        publish(config, topic, sign(body, key))
    except _FAILURES as exc:
        return _failed("command", exc)
    print(f"sent `{' '.join(command)}` to {gateway} on {topic} (version {body['version']}); "
          "its answer comes back as a command_answer event")
    return 0


def show_config_status(config: FleetConfig, gateway: str | None, as_json: bool) -> int:
    try:
        with psycopg.connect(config.database.dsn.get_secret_value()) as conn:
            statuses = config_status(conn, gateway)
    except psycopg.errors.UndefinedTable as exc:
        print(f"config status: {exc}; run `edge-fleet migrate` first", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"config status: the fleet database: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps([s.as_dict() for s in statuses], indent=1))
    elif not statuses:
        print("no configuration pushed or reported yet")
    else:
        print("\n".join(format_table(statuses)))
    return 0
