"""The `edge-agent` command. Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from agent import __version__
from agent.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_RESTART,
    add_config_argument,
    load_or_exit,
    quiet_logs,
)


def cmd_check(args: argparse.Namespace) -> int:
    from agent.cli.check import summary, warnings

    loaded = load_or_exit(args.config)
    for line in summary(loaded):
        print(line)
    if args.explain:
        from agent.store.sharing import explain
        from agent.uplink.sparkplug.explain import explain_sparkplug

        print()
        for line in explain(loaded.config, sparkplug=explain_sparkplug):
            print(line)
    for line in warnings(loaded):
        print(f"warning: {line}", file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args.config)
    from agent.service.logs import configure_logging

    configure_logging(args.log_level or loaded.config.log.level)
    import structlog

    from agent.service.private_dir import prepare_state_dir

    log = structlog.get_logger("agent.cli")
    state_dir = loaded.config.gateway.state_dir
    try:
        for change in prepare_state_dir(state_dir):
            log.warning("state_dir_narrowed", change=change)
    except OSError as exc:
        log.error("agent_failed", error=f"cannot create gateway.state_dir {state_dir}: "
                  f"{exc.strerror}")
        return EXIT_FAILURE
    # `kill -USR1 <pid>` writes every thread's stack to the log: for a hung agent in the field.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Before numba is imported: compiled kernels are cached in the state directory,
    # so a restart does not compile again.
    # One folder per version of the kernels' source (agent/detect/kernels/source.py says why).
    from agent.detect.kernels.source import kernel_cache_dir

    os.environ.setdefault("NUMBA_CACHE_DIR",
                          str(kernel_cache_dir(loaded.config.gateway.state_dir / "numba-cache")))
    from agent.service.systemd import Notifier
    from agent.store import StoreError
    from agent.supervisor.runtime import run_agent
    from agent.uplink.credentials import CredentialError

    async def main() -> bool:
        stop, reload = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP (systemctl reload): read the configuration file again; several in a row
        # before the reload starts make one reload.
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        return await run_agent(loaded, stop, reload, Notifier())

    try:
        restart = asyncio.run(main())
    except (StoreError, CredentialError) as exc:
        log.error("agent_failed", error=str(exc))
        return EXIT_FAILURE
    if restart:  # a pushed configuration that applies at start: systemd starts us again
        log.info("agent_restarting", detail="to apply a remote configuration; under systemd "
                 f"(Restart=on-failure) it starts again, exit status {EXIT_RESTART}")
        return EXIT_RESTART
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    from agent.cli.tail import tail, topic_filter

    host, port, tls, ca_file, username, password = args.host, args.port, not args.no_tls, None, None, None
    topic = args.topic
    if args.config:
        cfg = load_or_exit(args.config).config
        mqtt = cfg.mqtt
        host = args.host or mqtt.host
        port = args.port or mqtt.effective_port
        tls = mqtt.tls.enabled and not args.no_tls
        ca_file = str(mqtt.tls.ca_file) if mqtt.tls.ca_file else None
        username = mqtt.username
        from agent.uplink.credentials import CredentialError, mqtt_password

        try:
            secret = mqtt_password(mqtt)
        except CredentialError as exc:
            print(f"tail: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        password = secret.get_secret_value() if secret else None
        if mqtt.format == "sparkplug":
            from agent.cli.tail_sparkplug import sparkplug_filter

            group = mqtt.sparkplug.group_id or cfg.gateway.site
            topic = topic or sparkplug_filter(group, cfg.gateway.id)
        topic = topic or topic_filter(mqtt.topic, site=cfg.gateway.site, gateway=cfg.gateway.id)
    if not host:
        print("tail: give -c FILE or --host", file=sys.stderr)
        return EXIT_CONFIG
    return tail(
        host=host, port=port or (8883 if tls else 1883), topic=topic or "#", tls=tls,
        ca_file=ca_file, username=username, password=password, as_json=args.json, count=args.count,
        timeout_s=args.timeout,
    )


def cmd_buffer(args: argparse.Namespace) -> int:
    from agent.cli.buffer import export, print_stats
    from agent.store import StoreError

    path = load_or_exit(args.config).config.store_path
    try:
        if args.action == "stats":
            print_stats(path, sys.stdout, args.json)
            return EXIT_OK
        if args.output in (None, "-"):
            count = export(path, sys.stdout)
        else:
            with open(args.output, "w") as out:
                count = export(path, out)
        print(f"exported {count} events from {path}", file=sys.stderr)
    except (StoreError, OSError) as exc:
        print(f"buffer: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _env_for_status(path: str) -> dict[str, str]:
    """The environment, with the variables the file needs but lacks (and gives no default
    for) set empty: `status` needs only the state directory, not the secrets
    (`${MQTT_PASSWORD}`) that only the service's environment holds."""
    import re

    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""  # load_config names the problem
    needed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    return {**{name: "" for name in needed}, **os.environ}


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from agent.service.status import STATUS_SOCKET, format_status, read_status

    config = load_or_exit(args.config, _env_for_status(args.config)).config
    path = config.gateway.state_dir / STATUS_SOCKET
    try:
        document = read_status(path)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"status: the agent is not running (nothing answers on {path})", file=sys.stderr)
        return EXIT_FAILURE
    except PermissionError:
        print(f"status: not allowed to read {path} (run as the agent's user or root)",
              file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, ValueError) as exc:
        print(f"status: no usable answer on {path}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        for line in format_status(document):
            print(line)
    return EXIT_OK


def cmd_relearn(args: argparse.Namespace) -> int:
    from agent.service.relearn import run

    if bool(args.all) == bool(args.device):
        print("relearn: name a DEVICE (and, if not all of its rules, the RULEs), or give --all",
              file=sys.stderr)
        return EXIT_CONFIG
    quiet_logs()
    config = load_or_exit(args.config, _env_for_status(args.config)).config
    return run(config, None if args.all else args.device, args.rules, sys.stdout, sys.stderr)


def cmd_plan(args: argparse.Namespace) -> int:
    from agent.cli.modbus import modbus_devices, print_plan

    config = load_or_exit(args.config, _env_for_status(args.config)).config
    try:
        devices = modbus_devices(config, args.device)
    except ValueError as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print_plan(devices, sys.stdout)
    return EXIT_OK


def cmd_read(args: argparse.Namespace) -> int:
    from agent.cli import modbus, opcua
    from drivers.opcua.config import OpcUaDevice

    quiet_logs()
    config = load_or_exit(args.config, _env_for_status(args.config)).config
    chosen = [d for d in config.devices if args.device in (None, d.name)]
    if not chosen:
        known = ", ".join(d.name for d in config.devices)
        print(f"read: no device named {args.device!r} (configured: {known})", file=sys.stderr)
        return EXIT_CONFIG
    modbus_devices = [d for d in modbus.modbus_devices(config, None)
                      if args.device in (None, d.name)]
    opcua_devices = [d for d in chosen if isinstance(d, OpcUaDevice)]

    async def read() -> bool:
        ok = await modbus.read_all(modbus_devices, sys.stdout, sys.stderr)
        return await opcua.read_all(opcua_devices, config.gateway.state_dir, sys.stdout,
                                    sys.stderr) and ok

    return EXIT_OK if asyncio.run(read()) else EXIT_FAILURE


def cmd_probe(args: argparse.Namespace) -> int:
    from agent.cli.modbus import run_probe

    quiet_logs()
    return run_probe(args.url, args.unit, args.register, args.table, args.address, args.count,
                     args.timeout, sys.stdout, sys.stderr)


def cmd_replay(args: argparse.Namespace) -> int:
    from agent.cli.replay import ReplayError, run_replay

    config = load_or_exit(args.config, _env_for_status(args.config)).config
    try:
        run_replay(config, Path(args.csv), device_name=args.device, time_column=args.time_column,
                   scores_path=Path(args.scores) if args.scores else None, out=sys.stdout)
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_version(_args: argparse.Namespace) -> int:
    print(f"edge-agent {__version__}")
    for dist in ("pymodbus", "asyncua", "paho-mqtt", "numba", "numpy", "msgpack", "pydantic"):
        try:
            print(f"  {dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            print(f"  {dist} missing")
    print(f"  python {sys.version.split()[0]}")
    from agent.detect.kernels import jit

    why = f" ({jit.why_not_aot()})" if jit.why_not_aot() else ""
    print(f"  kernels {jit.mode()}{why}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Edge agent for retrofitted machines: polls devices, detects locally, "
        "stores and forwards condensed events to an MQTT broker.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent (as the system service does)")
    add_config_argument(run)
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                     help="overrides log.level of the configuration")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a configuration and say what it will do")
    add_config_argument(check)
    check.add_argument("--explain", action="store_true",
                       help="list exactly which data goes to which topic, for sign-off")
    check.set_defaults(func=cmd_check)

    tail = sub.add_parser("tail", help="print the events arriving at the broker, decoded")
    tail.add_argument("-c", "--config", help="take broker, credentials and topic from this file")
    tail.add_argument("--host", help="broker host (overrides the configuration)")
    tail.add_argument("--port", type=int, help="broker port (overrides the configuration)")
    tail.add_argument("--topic", help="subscription (default: every topic of this gateway)")
    tail.add_argument("--no-tls", action="store_true", help="connect without TLS")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--count", type=int, help="exit after this many events")
    tail.add_argument("--timeout", type=float, default=10.0,
                      help="seconds to wait for the connection and the broker's answer (10)")
    tail.set_defaults(func=cmd_tail)

    buffer = sub.add_parser("buffer", help="show or export the events waiting to be sent")
    buffer.add_argument("action", choices=["stats", "export"],
                        help="stats: depth, age, bytes, drops; export: every event as JSON lines")
    add_config_argument(buffer)
    buffer.add_argument("--json", action="store_true", help="stats as one JSON object")
    buffer.add_argument("-o", "--output", help="export to this file (default: standard output)")
    buffer.set_defaults(func=cmd_buffer)

    status = sub.add_parser("status", help="show how the running agent is doing")
    add_config_argument(status)
    status.add_argument("--json", action="store_true", help="the raw status document")
    status.set_defaults(func=cmd_status)

    relearn = sub.add_parser(
        "relearn", help="make a device's anomaly rules learn again (after a repair, a new "
        "normal)", description="Forgets what the rules learned (a pca model, the baselines "
        "of zscore, drift and rms, band_rms levels), so that they learn again from the next "
        "samples: done by the running agent at once, or in the state file when it is stopped.")
    add_config_argument(relearn)
    relearn.add_argument("device", nargs="?", metavar="DEVICE", help="the device")
    relearn.add_argument("rules", nargs="*", metavar="RULE",
                         help="only these rules of the device (default: all that learn)")
    relearn.add_argument("--all", action="store_true", help="every rule of every device")
    relearn.set_defaults(func=cmd_relearn)

    plan = sub.add_parser("plan", help="print each Modbus poll group's read requests")
    add_config_argument(plan)
    plan.add_argument("--device", help="only this device")
    plan.set_defaults(func=cmd_plan)

    read = sub.add_parser("read", help="read every configured tag once and print it (Modbus "
                          "and OPC UA)")
    add_config_argument(read)
    read.add_argument("--device", help="only this device")
    read.set_defaults(func=cmd_read)

    probe = sub.add_parser(
        "probe", help="read raw registers of an unconfigured device and decode them every way",
        description="Reads only. URL: tcp://HOST:PORT, rtu-tcp://HOST:PORT or "
        "rtu:///dev/ttyUSB0?baudrate=9600&parity=E&stop_bits=1",
    )
    probe.add_argument("protocol", choices=["modbus"])
    probe.add_argument("url")
    probe.add_argument("--unit", type=int, default=1, help="unit (slave) id, default 1")
    probe.add_argument("--register", help="first register in datasheet notation, e.g. 40001")
    probe.add_argument("--table", choices=["coil", "discrete", "holding", "input"],
                       help="with --address: the table, instead of --register")
    probe.add_argument("--address", type=int, help="with --table: zero-based address")
    probe.add_argument("--count", type=int, default=2, help="registers (or bits) to read, default 2")
    probe.add_argument("--timeout", type=float, default=2.0, help="seconds, default 2")
    probe.set_defaults(func=cmd_probe)
    from agent.cli.opcua import add_commands as add_opcua_commands

    add_opcua_commands(sub)  # browse, opcua trust

    replay = sub.add_parser("replay", help="run a device's detectors over a recorded CSV file "
                            "(to tune thresholds)")
    add_config_argument(replay)
    replay.add_argument("--csv", required=True, help="recorded data: one column per tag, "
                        "the tag names as header")
    replay.add_argument("--device", help="the device whose detectors run (needed when there are several)")
    replay.add_argument("--time-column", help="column holding each row's time (ISO 8601 or "
                        "epoch seconds); without it rows are one poll interval apart")
    replay.add_argument("--scores", metavar="OUT.csv",
                        help="write the detectors' per-sample scores to this file")
    replay.set_defaults(func=cmd_replay)

    version = sub.add_parser("version", help="print the versions of the agent and its libraries")
    version.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        code = EXIT_OK
    except BrokenPipeError:
        # `edge-agent probe ... | head`: the reader has gone; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    return code


if __name__ == "__main__":
    raise SystemExit(main())
