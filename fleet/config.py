"""The fleet side's configuration file: the broker it reads from and the database it writes to.

Loaded like the agent's (`agent.config.loader.load_model`): `file:line` messages, exit 2,
`${NAME}` from the environment for secrets (the database password goes in the DSN's
environment variable, never in the file).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator

from agent.config.loader import load_model
from drivers.settings import Settings


class FleetTls(Settings):
    enabled: bool = True
    """TLS is the default; switch it off only for a broker on this host."""
    ca_file: Path | None = None
    """CA bundle that signs the broker's certificate; the system store when absent."""


class FleetMqtt(Settings):
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    """Defaults to 8883 with TLS, 1883 without."""
    username: str | None = None
    password: SecretStr | None = None
    client_id: str = Field(default="edge-fleet-ingest", min_length=1, max_length=128)
    """Unique per ingest process: the broker keeps each one's session (and what it has not
    acknowledged) while it is away."""
    group: str = Field(default="edge-fleet", pattern=r"^[^/+#]+$")
    """The shared subscription's group: processes of one group share the fleet's events."""
    topic: str = "+/+/+/+"
    """What the agents publish to, as a filter: their `{site}/{gateway}/{device}/{kind}`."""
    session_expiry_s: float = Field(default=7 * 86400.0, ge=0)
    """How long the broker keeps the session (and queues events) of an ingest that is down."""
    command_topic: str = "{site}/{gateway}/_command"
    """Where `edge-fleet config push` and `edge-fleet command` publish a gateway's signed
    messages: the agents' `remote.topic`, with the same `{site}` and `{gateway}` fields."""
    tls: FleetTls = FleetTls()

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_shorthand(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value

    @field_validator("command_topic")
    @classmethod
    def _command_topic_fields(cls, topic: str) -> str:
        used = {name for _, name, _, _ in string.Formatter().parse(topic) if name is not None}
        if used - {"site", "gateway"}:
            raise ValueError("the command topic may use only {site} and {gateway}")
        if "{gateway}" not in topic:
            raise ValueError("the command topic must name the gateway ({gateway}): each "
                             "gateway has its own")
        if "+" in topic or "#" in topic:
            raise ValueError("the command topic cannot hold the wildcards '+' or '#'")
        return topic

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.tls.enabled else 1883)


class FleetDatabase(Settings):
    dsn: SecretStr
    """A libpq connection string or URI (`host=db dbname=fleet user=ingest`), best from the
    environment: `dsn: ${FLEET_DATABASE_DSN}`."""


class FleetIngest(Settings):
    receive_maximum: int = Field(default=10_000, ge=1, le=65_535)
    """Unacknowledged messages the broker may send ahead (MQTT 5 Receive Maximum): since a
    message is acknowledged only after its commit, this bounds the events per second to
    about this many per commit."""
    batch_max_events: int = Field(default=1000, ge=1, le=100_000)
    """Events committed in one transaction at most."""
    batch_max_s: float = Field(default=0.2, gt=0, le=60)
    """How long a batch waits to fill before it is committed (and its messages acknowledged)."""


class FleetServe(Settings):
    listen: str = "127.0.0.1"
    """Loopback by default: put a reverse proxy with TLS in front (docs/fleet.md), or give
    `tls_cert_file` and `tls_key_file`."""
    port: int = Field(default=8080, ge=1, le=65535)
    users: dict[str, SecretStr] = Field(default_factory=dict)
    """Login name -> password hash, as `edge-fleet password` prints it (scrypt)."""
    session_secret: SecretStr | None = None
    """Signs the login cookie; at least 32 characters, from the environment."""
    session_max_age_s: float = Field(default=12 * 3600.0, gt=0)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @field_validator("session_secret")
    @classmethod
    def _long_enough(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and len(secret.get_secret_value()) < 32:
            raise ValueError("session_secret must be at least 32 characters (e.g. "
                             "`openssl rand -hex 32`, given through the environment)")
        return secret


class FleetConfig(Settings):
    mqtt: FleetMqtt
    database: FleetDatabase
    ingest: FleetIngest = FleetIngest()
    serve: FleetServe = FleetServe()


def load_fleet_config(path: Path) -> FleetConfig:
    """The validated file; `ConfigError` with every problem, one `file:line: ...` each."""
    return load_model(path, FleetConfig, sections="mqtt, database, ingest, serve").model
