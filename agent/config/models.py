"""The configuration file's schema: one pydantic model per YAML section.

Defaults live here and nowhere else. Every model forbids unknown keys, so a typo
is an error instead of a setting that silently does nothing.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from drivers.modbus.config import ModbusTcpDevice
from drivers.naming import require_unique_names

DeviceConfig = ModbusTcpDevice
"""Every device kind the agent can poll (a discriminated union on `protocol` as drivers are added)."""

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
TOPIC_FIELDS = frozenset({"site", "gateway", "device", "kind"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_identifier(value: str, what: str) -> str:
    """Ids end up in MQTT topics and file names: no spaces, '/', '+' or '#'."""
    if not _IDENTIFIER.match(value):
        raise ValueError(
            f"{what} {value!r} must start with a letter or digit and hold only "
            "letters, digits, '_', '.' or '-'"
        )
    return value


class GatewayConfig(_Section):
    id: str
    """Unique per gateway; part of every topic and event."""
    site: str = "default"
    state_dir: Path = Path("/var/lib/edge-agent")
    """Event store, numba cache and (later) certificates live here."""

    @field_validator("id", "site")
    @classmethod
    def _ids(cls, value: str) -> str:
        return _check_identifier(value, "id")


class TlsConfig(_Section):
    enabled: bool = True
    """TLS is the default towards the cloud; switch it off only for a broker on this host."""
    ca_file: Path | None = None
    """CA bundle that signs the broker's certificate; the system store when absent."""
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class MqttConfig(_Section):
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)
    """Defaults to 8883 with TLS, 1883 without."""
    client_id: str | None = None
    """Defaults to the gateway id."""
    username: str | None = None
    password: SecretStr | None = None
    """Kept as a secret: never printed, never logged. Use ${ENV_VAR} to keep it out of the file."""
    tls: TlsConfig = TlsConfig()
    version: Literal["5", "3.1.1"] = "5"
    topic: str = "{site}/{gateway}/{device}/{kind}"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    max_inflight: int = Field(default=100, ge=1, le=65535)
    """Messages published but not yet acknowledged; bounds replay throughput and memory."""

    @field_validator("topic")
    @classmethod
    def _topic_fields_known(cls, topic: str) -> str:
        used = {name for _, name, _, _ in string.Formatter().parse(topic) if name is not None}
        unknown = used - TOPIC_FIELDS
        if unknown:
            raise ValueError(
                f"unknown topic field(s) {', '.join(sorted(unknown))}; "
                f"use {', '.join('{' + f + '}' for f in sorted(TOPIC_FIELDS))}"
            )
        if "+" in topic or "#" in topic:
            raise ValueError("a topic to publish to cannot hold the wildcards '+' or '#'")
        return topic

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls.enabled else 1883


class StoreConfig(_Section):
    path: Path | None = None
    """SQLite file of the outgoing queue; `<state_dir>/events.sqlite` when absent."""
    commit_interval_s: float = Field(default=0.5, gt=0, le=60)
    commit_max_events: int = Field(default=200, ge=1, le=100_000)
    """A batch is committed when either bound is reached: few writes spare SD cards."""


class AggregateConfig(_Section):
    window_s: float = Field(default=60.0, gt=0, le=86400)
    """Length of the per-tag aggregate windows (min, max, mean, last, count)."""


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class AgentConfig(_Section):
    gateway: GatewayConfig
    mqtt: MqttConfig
    store: StoreConfig = StoreConfig()
    aggregate: AggregateConfig = AggregateConfig()
    log: LogConfig = LogConfig()
    devices: list[DeviceConfig] = Field(min_length=1)

    @field_validator("devices")
    @classmethod
    def _device_names_unique(cls, devices: list[DeviceConfig]) -> list[DeviceConfig]:
        for device in devices:
            _check_identifier(device.name, "device name")
        require_unique_names(devices, "device")
        return devices

    @property
    def store_path(self) -> Path:
        return self.store.path or self.gateway.state_dir / "events.sqlite"
