"""Configurations for tests that build a device's detectors as the agent does, without an agent."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.detect.base import Detector


def offline_config(directory: Path, body: str) -> Path:
    """`directory/config.yaml`: `body` (the `devices`, `machines` and `detectors` sections,
    YAML) under a gateway whose state directory is `directory/state` and a broker nobody
    connects to: for building a device's detectors as the agent does (`device_detector`),
    without an agent."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(f"gateway: {{id: gw, state_dir: {directory / 'state'}, clock: rtc}}\n"
                    "mqtt: {host: 127.0.0.1, tls: {enabled: false}}\n" + body.lstrip("\n"))
    return path


def device_detector(config: Path, device: str | None = None) -> Detector:
    """The detector the agent builds for a device of the configuration file (its first
    device by default)."""
    from agent.config import load_config
    from agent.detect.device import make_detector

    loaded = load_config(config, environ={}).config
    return make_detector(loaded, next(d for d in loaded.devices
                                      if device is None or d.name == device))
