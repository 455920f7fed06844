"""What every `edge-agent` command shares: exit codes, loading a config or exiting."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from agent.config import ConfigError, LoadedConfig, load_config

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
EXIT_RESTART = 75
"""`run` stopped to apply a remote configuration at start (EX_TEMPFAIL)."""
CONFIG_VARIABLE = "EDGE_AGENT_CONFIG"
SYSTEM_CONFIG = "/etc/edge-agent/config.yaml"


def default_config() -> str:
    """Where a command finds the configuration without -c: $EDGE_AGENT_CONFIG, else the
    service's file."""
    return os.environ.get(CONFIG_VARIABLE) or SYSTEM_CONFIG


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=default_config(),
                        help=f"configuration file (YAML; default ${CONFIG_VARIABLE} or "
                             f"{SYSTEM_CONFIG}: %(default)s)")


def load_or_exit(path: str, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """The configuration at `path`, or its problems on stderr (file:line each) and exit 2."""
    try:
        return load_config(path, environ)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        if path == default_config() and not os.path.exists(path):
            print(f"(no -c given: the default is ${CONFIG_VARIABLE} or {SYSTEM_CONFIG}; give "
                  f"-c FILE)", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def quiet_logs() -> None:
    """The technician's commands print their own findings; only warnings go to the log."""
    from agent.service.logs import configure_logging

    configure_logging("warning")
