"""`edge-agent browse`, `edge-agent opcua trust` and the OPC UA side of `edge-agent read`:
the OPC UA commands a technician runs while setting a device up. Thin: the protocol work is
in drivers/opcua/browse.py, trust.py and the driver's `read_values`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, load_or_exit
from drivers.errors import DeviceError
from drivers.opcua.config import OpcUaDevice

if TYPE_CHECKING:
    from drivers.opcua.client import TagValue

ARRAY_SHOWN = 3
"""Elements of an array value printed by `read` (the count says how many there are)."""
_OTHER_TEXT = 60


def _quiet_asyncua() -> None:
    """asyncua warns on stderr about negotiated timeouts; the commands say what matters."""
    import logging

    logging.getLogger("asyncua").setLevel(logging.CRITICAL)


def add_commands(sub: Any) -> None:
    """Register the subcommands on the `edge-agent` parser's subparsers."""
    browse = sub.add_parser("browse", help="print an OPC UA server's address space as a tree")
    browse.add_argument("endpoint", help="opc.tcp://HOST:PORT[/path]")
    browse.add_argument("--node", default="i=85",
                        help="start node (default i=85, the Objects folder)")
    browse.add_argument("--depth", type=int, default=3, help="levels below it (default 3)")
    browse.add_argument("--yaml", action="store_true",
                        help="print a ready `tags:` list for the variables instead of the tree")
    browse.add_argument("--select", action="append", metavar="NODEID",
                        help="with --yaml: only these variables (repeat the option)")
    browse.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    browse.add_argument("-c", "--config",
                        help="with --device: connect with that device's security and login")
    browse.add_argument("--device", help="an OPC UA device of the configuration (-c)")
    browse.set_defaults(func=cmd_browse)

    opcua = sub.add_parser("opcua", help="OPC UA set-up: trust a server's certificate")
    actions = opcua.add_subparsers(dest="action", required=True, metavar="ACTION")
    trust = actions.add_parser("trust", help="show a server's certificate and pin it if you agree")
    trust.add_argument("endpoint", help="opc.tcp://HOST:PORT[/path]")
    where = trust.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", help="configuration file: its gateway.state_dir")
    where.add_argument("--state-dir", type=Path, help="the agent's state directory")
    trust.add_argument("--yes", action="store_true",
                       help="pin without asking (only after comparing the fingerprint)")
    trust.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server")
    trust.set_defaults(func=cmd_opcua_trust)


def cmd_browse(args: argparse.Namespace) -> int:
    from asyncua.client.client import Client
    from asyncua.ua.uaerrors import UaError

    from drivers.opcua import pki
    from drivers.opcua.browse import browse_tree, render_tree, variables, yaml_tags
    from drivers.opcua.config import check_node_id
    from drivers.opcua.security import secure

    _quiet_asyncua()

    try:
        for node in [args.node, *(args.select or [])]:
            check_node_id(node)
    except ValueError as exc:
        print(f"browse: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    device: OpcUaDevice | None = None
    state_dir = Path(".")
    if args.config or args.device:
        if not (args.config and args.device):
            print("browse: -c CONFIG and --device NAME go together", file=sys.stderr)
            return EXIT_CONFIG
        config = load_or_exit(args.config).config
        state_dir = config.gateway.state_dir
        found = [d for d in config.devices if d.name == args.device]
        if not found or not isinstance(found[0], OpcUaDevice):
            print(f"browse: {args.config} has no OPC UA device {args.device!r}", file=sys.stderr)
            return EXIT_CONFIG
        device = found[0]

    async def run() -> list[str]:
        client = Client(args.endpoint, timeout=args.timeout)
        client.application_uri = pki.APPLICATION_URI
        if device is not None:
            await secure(client, device, pki.pki_dir(state_dir))
        await client.connect()
        try:
            root = await browse_tree(client, args.node, max(0, args.depth))
        finally:
            await client.disconnect()
        if not args.yaml:
            return render_tree(root)
        chosen = list(variables(root))
        if args.select:
            wanted = set(args.select)
            chosen = [v for v in chosen if v.node_id in wanted]
            missing = wanted - {v.node_id for v in chosen}
            if missing:
                raise LookupError(f"not variables under {args.node} within --depth "
                                  f"{args.depth}: {', '.join(sorted(missing))}")
        return yaml_tags(chosen)

    try:
        lines = asyncio.run(run())
    except (OSError, TimeoutError) as exc:
        print(f"browse: cannot reach {args.endpoint}: {exc or type(exc).__name__}",
              file=sys.stderr)
        return EXIT_FAILURE
    except DeviceError as exc:  # the device's security: refused, or the PKI not ours
        print(f"browse: {exc.detail}", file=sys.stderr)
        return EXIT_FAILURE
    except (UaError, LookupError) as exc:
        hint = ""
        if "No matching endpoints" in str(exc):
            hint = ("; the server requires security: add -c CONFIG --device NAME to browse with "
                    "a configured device's security")
        print(f"browse: {args.endpoint}: {exc}{hint}", file=sys.stderr)
        return EXIT_FAILURE
    for line in lines:
        print(line)
    return EXIT_OK


def cmd_opcua_trust(args: argparse.Namespace) -> int:
    from drivers.opcua import pki
    from drivers.opcua.trust import fetch_server_certificate, trust

    _quiet_asyncua()

    if args.config:
        state_dir = load_or_exit(args.config).config.gateway.state_dir
    else:
        state_dir = args.state_dir
    pki_dir = pki.pki_dir(state_dir)
    try:
        server = asyncio.run(fetch_server_certificate(args.endpoint, args.timeout))
    except (OSError, TimeoutError) as exc:
        print(f"opcua trust: cannot reach {args.endpoint}: {exc or type(exc).__name__}",
              file=sys.stderr)
        return EXIT_FAILURE
    except LookupError as exc:
        print(f"opcua trust: {exc}; nothing to trust", file=sys.stderr)
        return EXIT_FAILURE
    print(f"server      {args.endpoint}")
    print(f"subject     {server.subject}")
    print(f"valid until {server.not_after}")
    print(f"endpoints   {', '.join(server.policies)}")
    print(f"SHA-256     {server.fingerprint}")
    print("Compare the fingerprint with the one the server itself shows (its display, web page "
          "or documentation) before trusting it.")

    def confirm(question: str) -> bool:
        if args.yes:
            return True
        print(f"{question}? [y/N] ", end="", flush=True)
        answer = sys.stdin.readline().strip().lower()
        return answer in ("y", "yes")

    try:
        path = trust(server, pki_dir, confirm)
    except PermissionError as exc:
        print(f"opcua trust: cannot write {exc.filename or pki_dir}: permission denied; run "
              "it as root (sudo), or as the agent's user", file=sys.stderr)
        return EXIT_FAILURE
    if path is None:
        print("not trusted: nothing changed", file=sys.stderr)
        return EXIT_FAILURE
    if path.is_dir():
        print(f"already trusted (in {path})")
    else:
        print(f"trusted: pinned in {path}; the agent connects from its next attempt on")
    if os.geteuid() == 0:
        owner = pki.user_name(pki_dir.stat().st_uid)
        print(f"{pki_dir} belongs to {owner}, the owner of {state_dir}")
    return EXIT_OK


# --- read ---------------------------------------------------------------------------------

async def read_device(device: OpcUaDevice, state_dir: Path
                      ) -> tuple[list[TagValue], DeviceError | None]:
    """Every tag of the device once (one Read, no subscription made); a device that fails
    gives its error."""
    from drivers.opcua.client import OpcUaDriver

    _quiet_asyncua()
    driver = OpcUaDriver(device, state_dir, with_subscription=False)
    try:
        await driver.connect()
        return await driver.read_values(), None
    except DeviceError as exc:
        return [], exc
    finally:
        await driver.close()


def format_tag_value(value: TagValue) -> str:
    """The value as the agent reads it, every digit of its type; an array's count and its
    first elements."""
    if value.error is not None:
        return "error: " + ("no such browse path" if value.status == "BadNoMatch"
                            else "no such node")
    payload = value.value
    if isinstance(payload, list | tuple):
        shown = ", ".join(_format_one(item, value.variant) for item in payload[:ARRAY_SHOWN])
        more = ", ..." if len(payload) > ARRAY_SHOWN else ""
        return f"[{len(payload)}] {shown}{more}"
    return _format_one(payload, value.variant)


def _format_one(value: object, variant: str | None) -> str:
    from agent.cli.modbus import format_value  # imported when reading: it loads pymodbus

    if isinstance(value, bool):
        return format_value(float(value), "bool")
    if isinstance(value, int):
        return str(value)  # exact: an Int64 or UInt64 holds more digits than a float
    if isinstance(value, float):
        return format_value(value, "float32" if variant == "Float" else "float64")
    if value is None or isinstance(value, str):
        return format_value(value, "string")
    text = repr(value)
    return text if len(text) <= _OTHER_TEXT else text[: _OTHER_TEXT - 3] + "..."


def _format_time(moment: datetime | None) -> str:
    """UTC to the millisecond (asyncua's datetimes are naive UTC)."""
    if moment is None:
        return "-"
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def print_values(device: OpcUaDevice, values: Sequence[TagValue], out: TextIO) -> None:
    rows = [("tag", "node", "value", "status", "source time", "server time", "unit")]
    for v in values:
        rows.append((v.tag.name, v.tag.address, format_tag_value(v), v.status,
                     _format_time(v.source_time), _format_time(v.server_time), v.tag.unit))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    print(f"device {device.name} ({device.endpoint}):", file=out)
    for row in rows:
        cells = "  ".join(cell.ljust(w) for cell, w in zip(row[:6], widths, strict=True))
        print(f"  {cells}  {row[6]}".rstrip(), file=out)


def array_warnings(values: Sequence[TagValue]) -> list[str]:
    """Arrays longer than their tag's `max_array_length`: the agent would keep only the first."""
    lines = []
    for v in values:
        if isinstance(v.value, list | tuple) and len(v.value) > v.tag.max_array_length:
            lines.append(f"tag {v.tag.name}: arrays of {len(v.value)} values, the agent keeps "
                         f"the first {v.tag.max_array_length} (max_array_length): set "
                         f"max_array_length: {len(v.value)} to keep them all")
    return lines


async def read_all(devices: Sequence[OpcUaDevice], state_dir: Path, out: TextIO,
                   err: TextIO) -> bool:
    """Read and print each device in turn; False when one could not be read or refused tags."""
    ok = True
    for device in devices:
        values, error = await read_device(device, state_dir)
        if error is not None:
            ok = False
            print(f"device {device.name}: {error.reason}: {error.detail}", file=err)
        if values:
            print_values(device, values, out)
        for line in array_warnings(values):
            print(f"device {device.name}: warning: {line}", file=err)
        refused = [v.tag.name for v in values if v.error is not None]
        if refused:
            ok = False
            print(f"device {device.name}: {len(refused)} tag(s) refused by the server: "
                  + ", ".join(refused), file=err)
    return ok
