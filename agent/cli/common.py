"""What every `edge-agent` command shares: exit codes, loading a config or exiting."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from agent.config import ConfigError, LoadedConfig, load_config

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def load_or_exit(path: str, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """The configuration at `path`, or its problems on stderr (file:line each) and exit 2."""
    try:
        return load_config(path, environ)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def quiet_logs() -> None:
    """The technician's commands print their own findings; only warnings go to the log."""
    from agent.service.logs import configure_logging

    configure_logging("warning")
