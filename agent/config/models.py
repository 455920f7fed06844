"""The configuration file's schema: one pydantic model per YAML section.

Defaults live here and nowhere else. Every model forbids unknown keys, so a typo
is an error instead of a setting that silently does nothing.
"""

from __future__ import annotations

import difflib
import re
import string
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.config.detection import BandRmsRule, DetectorRule, rule_names
from agent.config.machines import MachineConfig
from drivers.modbus.config import ModbusRtuDevice, ModbusRtuTcpDevice, ModbusTcpDevice, line_key
from drivers.naming import require_unique_names
from drivers.opcua.config import OpcUaDevice
from drivers.settings import Settings

DeviceConfig = Annotated[
    ModbusTcpDevice | ModbusRtuTcpDevice | ModbusRtuDevice | OpcUaDevice,
    Field(discriminator="protocol"),
]
"""Every device kind the agent can poll, told apart by `protocol`."""

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
TOPIC_FIELDS = frozenset({"site", "gateway", "device", "kind"})


class _Section(Settings):
    """A section of the file (`drivers.settings`: strict keys, sensible numbers)."""


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
    clock: Literal["ntp", "rtc"] = "ntp"
    """ntp: the clock is trusted once an NTP daemon has synchronized it (events made before
    are marked and corrected later); rtc: the gateway keeps time itself, trust it at once."""

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


class SparkplugConfig(_Section):
    """`mqtt.format: sparkplug`: the gateway as a Sparkplug B 3.0 Edge Node (docs/sparkplug.md)."""

    group_id: str | None = None
    """The Sparkplug group (`spBv1.0/{group_id}/...`); the gateway's `site` when absent."""
    primary_host_id: str | None = None
    """A Primary Host Application: births wait until its `spBv1.0/STATE/{id}` says online,
    and while it is offline nothing is sent (the store keeps it)."""

    @field_validator("group_id", "primary_host_id")
    @classmethod
    def _ids(cls, value: str | None) -> str | None:
        return None if value is None else _check_identifier(value, "Sparkplug id")


class MqttConfig(_Section):
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    """Defaults to 8883 with TLS, 1883 without."""
    client_id: str | None = None
    """Defaults to the gateway id."""
    username: str | None = None
    password: SecretStr | None = None
    """Kept as a secret: never printed, never logged. Use ${ENV_VAR} to keep it out of the file."""
    password_file: Path | None = None
    """Read the password from this file at start (its trailing newline is not part of it)."""
    password_credential: str | None = None
    """Read the password from the systemd credential of this name (`LoadCredential=NAME:...`),
    i.e. from `$CREDENTIALS_DIRECTORY/NAME`, at start."""
    tls: TlsConfig = TlsConfig()
    """`tls: false` is short for `tls: {enabled: false}`."""
    version: Literal["5", "3.1.1"] = "5"
    topic: str = "{site}/{gateway}/{device}/{kind}"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """For the TCP connection and TLS handshake, then again for the broker's CONNACK."""
    ack_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """A publish without PUBACK for this long is reported (once) as a broker not acknowledging."""
    max_inflight: int = Field(default=100, ge=2, le=65535)
    """Messages published but not yet acknowledged; bounds replay throughput and memory."""
    replay_rate_per_s: float = Field(default=200.0, gt=0, le=1_000_000)
    """How fast the backlog of an outage is replayed, behind live events."""
    replay_after_s: float = Field(default=5.0, ge=0, le=86400)
    """An outage at least this long makes what was stored meanwhile a flagged backlog."""
    format: Literal["envelope", "sparkplug"] = "envelope"
    """envelope: our msgpack events on `topic` (docs/events.md); sparkplug: Sparkplug B 3.0
    (docs/sparkplug.md), `topic` then unused."""
    sparkplug: SparkplugConfig = SparkplugConfig()

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_shorthand(cls, value: object) -> object:
        return {"enabled": value} if isinstance(value, bool) else value

    @field_validator("password_credential")
    @classmethod
    def _credential_name(cls, name: str | None) -> str | None:
        # A file name inside $CREDENTIALS_DIRECTORY: no '/' or '..' can lead out of it.
        return None if name is None else _check_identifier(name, "credential name")

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttConfig:
        given = [
            key for key, value in (("password", self.password),
                                   ("password_file", self.password_file),
                                   ("password_credential", self.password_credential))
            if value is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give at most one of password, password_file and "
                             f"password_credential (got {' and '.join(given)})")
        if self.username is None and given:
            # MQTT sends a password only with a user name: it would be read and never used.
            raise ValueError(f"{given[0]} needs mqtt.username")
        return self

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, version: object) -> object:
        # `version: 5` (unquoted) is a YAML number; it means the same as "5".
        return str(version) if isinstance(version, int | float) else version

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


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (there are: {', '.join(options)})"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
               "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def parse_size(value: object) -> object:
    """`256 MiB`, `1.5GB` or a plain number of bytes; anything else is left to pydantic."""
    if isinstance(value, str) and (match := _SIZE.match(value)):
        return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    return value


class StoreConfig(_Section):
    path: Path | None = None
    """SQLite file of the outgoing queue; `<state_dir>/events.sqlite` when absent."""
    max_bytes: int = Field(default=256 * 2**20, ge=64 * 2**10)
    """Bound on stored event bytes (a number, or e.g. `256 MiB`). Over it, old aggregates are
    merged into coarser windows first, then the oldest, least important events dropped."""
    max_age_days: float = Field(default=30.0, gt=0, le=3650)
    """Events older than this are dropped (and counted)."""
    commit_interval_s: float = Field(default=0.5, gt=0, le=60)
    commit_max_events: int = Field(default=200, ge=1, le=100_000)
    """A batch is committed when either bound is reached: few writes spare SD cards."""
    outage_commit_interval_s: float = Field(default=20.0, gt=0, le=600)
    """While the broker is unreachable: batches of this interval (or 256 KiB), so that a page
    is written about once; alarms still within `commit_interval_s`."""

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        return parse_size(value)


class AggregateConfig(_Section):
    window_s: float = Field(default=60.0, gt=0, le=86400)
    """Length of the per-tag aggregate windows (min, max, mean, last, count)."""


class HealthConfig(_Section):
    heartbeat_s: float = Field(default=60.0, ge=0.1, le=86400)
    """A `heartbeat` event every this many seconds, and one at once when a device's status
    or the uplink's state changes."""
    prometheus_port: int | None = Field(default=None, ge=1, le=65535)
    """Serve the same numbers as Prometheus text on `http://HOST:PORT/metrics`; off when absent."""
    prometheus_host: str = "127.0.0.1"
    """Where the Prometheus endpoint listens: this host only, unless set (e.g. `0.0.0.0`)."""


class RemoteConfig(_Section):
    """Configuration and commands pushed from the fleet side, signed (docs/remote-config.md).

    Off unless enabled on site; never changed remotely (a pushed file must repeat it)."""

    enabled: bool = False
    trusted_keys: list[Path] = Field(default_factory=list)
    """Ed25519 public keys (PEM files on the gateway) whose signatures are accepted."""
    topic: str = "{site}/{gateway}/_command"
    """Where the agent receives signed messages (QoS 1, a persistent session)."""
    confirm_s: float = Field(default=60.0, ge=1, le=3600)
    """After applying a configuration: how long a device that was up has to be up again, and
    the uplink to be connected, before the previous file is restored."""
    allow_restart: bool = False
    """Whether a pushed change of `gateway`, `store` or `log` (which apply at start) may make
    the agent restart itself (under systemd, `Restart=on-failure`); else it is refused."""

    @field_validator("topic")
    @classmethod
    def _topic_fields_known(cls, topic: str) -> str:
        used = {name for _, name, _, _ in string.Formatter().parse(topic) if name is not None}
        if used - {"site", "gateway"}:
            raise ValueError("the command topic may use only {site} and {gateway}")
        if "+" in topic or "#" in topic:
            raise ValueError("the command topic cannot hold the wildcards '+' or '#'")
        return topic

    @model_validator(mode="after")
    def _keys_when_enabled(self, info: ValidationInfo) -> RemoteConfig:
        if not self.enabled:
            return self
        if not self.trusted_keys:
            raise ValueError("enabled needs at least one file in trusted_keys (the fleet "
                             "side's public key: edge-fleet keys new)")
        if not (info.context or {}).get("local_files", True):
            return self  # checked for a gateway elsewhere: its key files are there
        from agent.config.signed import KeyFileError, load_public_keys

        try:
            load_public_keys(self.trusted_keys)
        except KeyFileError as exc:
            raise ValueError(f"trusted_keys: {exc}") from None
        return self


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


_SERIAL_SETTINGS = ("baudrate", "parity", "stop_bits", "byte_size", "inter_frame_delay_s")


def _lines_consistent(devices: list[DeviceConfig]) -> None:
    """Devices sharing a line (a serial bus, a TCP gateway) need the same line settings: a line
    has only one; and on a serial line each its own unit id: two slaves cannot share one."""
    first: dict[object, ModbusTcpDevice | ModbusRtuTcpDevice | ModbusRtuDevice] = {}
    modbus = (ModbusTcpDevice, ModbusRtuTcpDevice, ModbusRtuDevice)
    for device in devices:
        if not isinstance(device, modbus):
            continue
        key = line_key(device)
        other = first.setdefault(key, device)
        if other is device:
            continue
        if other.unit == device.unit and key[0] != "tcp":
            raise ValueError(f"devices {other.name!r} and {device.name!r} are both unit "
                             f"{device.unit} on the same serial line: give each its own unit id")
        for setting in _SERIAL_SETTINGS:
            if hasattr(device, setting) and getattr(device, setting) != getattr(other, setting):
                raise ValueError(
                    f"devices {other.name!r} and {device.name!r} share a line but not its "
                    f"{setting} ({getattr(other, setting)} and {getattr(device, setting)}): "
                    "one line has one setting"
                )


def _gate_misfit(rule: DetectorRule, machines: list[MachineConfig] | None) -> str:
    """Why a rule's `while_states` cannot be watched ("" when it can, or when the machines
    are wrong already: their own error says so)."""
    if rule.while_states is None or machines is None:
        return ""
    own = [m.name for m in machines if m.device == rule.device]
    if rule.machine is not None and rule.machine in own:
        return ""
    if rule.machine is None and len(own) == 1:
        return ""
    elsewhere = next((m.device for m in machines if m.name == rule.machine), None)
    if elsewhere is not None:
        return (f"machine: machine {rule.machine!r} is on device {elsewhere!r}, not on the "
                f"rule's device {rule.device!r}")
    if not own:
        return (f"while_states: device {rule.device!r} has no machine to take the state "
                "from: add one under `machines:` (its power or current tag tells the state)")
    if rule.machine is None:
        return (f"machine: device {rule.device!r} has machines {', '.join(own)}: name the one "
                "whose state while_states reads")
    return (f"machine: device {rule.device!r} has no machine named {rule.machine!r}"
            + _did_you_mean(rule.machine, own))


def _band_rule_misfit(rule: BandRmsRule, device: DeviceConfig) -> str:
    """`key: why` when the device cannot deliver what the band_rms rule needs, else ''.

    A Modbus tag brings one sample per poll: its blocks must span polls, at the poll rate.
    An OPC UA array is cut to max_array_length samples: a capture must hold a block.
    """
    if isinstance(device, OpcUaDevice):
        if rule.continuous:
            return ""
        for node in device.tags:
            if node.name in rule.tags and node.max_array_length < rule.fft_samples:
                return (f"fft_samples: tag {node.name!r} keeps at most {node.max_array_length} "
                        f"samples of an array (max_array_length), fewer than fft_samples "
                        f"{rule.fft_samples}: a capture never fills a block; raise its "
                        f"max_array_length to {rule.fft_samples} or more (or set `continuous: "
                        "true` if the server hands out one stream in pieces)")
        return ""
    if not rule.continuous:
        return ("continuous: a Modbus tag brings one sample per poll, so a block of "
                f"fft_samples {rule.fft_samples} spans {rule.fft_samples} polls: set "
                "`continuous: true` (and sample_rate_hz to the poll rate)")
    for tag in device.tags:
        if tag.name in rule.tags:
            rate = 1.0 / device.interval_of(tag.poll_group)
            if abs(rate - rule.sample_rate_hz) > 0.01 * rate:
                return (f"sample_rate_hz: tag {tag.name!r} is polled at {rate:g} Hz, not at "
                        f"sample_rate_hz {rule.sample_rate_hz:g} Hz (a sample per poll)")
    return ""


class AgentConfig(_Section):
    gateway: GatewayConfig
    mqtt: MqttConfig
    store: StoreConfig = StoreConfig()
    aggregate: AggregateConfig = AggregateConfig()
    health: HealthConfig = HealthConfig()
    log: LogConfig = LogConfig()
    remote: RemoteConfig = RemoteConfig()
    devices: list[DeviceConfig] = Field(min_length=1)
    machines: list[MachineConfig] = Field(default_factory=list)
    """State, energy and usage per machine (`agent/config/machines.py`); after `devices`,
    whose tags its validator checks."""
    detectors: list[DetectorRule] = Field(default_factory=list)
    """Anomaly and limit rules (agent/config/detection.py, docs/detection.md)."""

    @field_validator("devices")
    @classmethod
    def _device_names_unique(cls, devices: list[DeviceConfig]) -> list[DeviceConfig]:
        for device in devices:
            _check_identifier(device.name, "device name")
        require_unique_names(devices, "device")
        _lines_consistent(devices)
        return devices

    @field_validator("machines")
    @classmethod
    def _machines_name_real_tags(
        cls, machines: list[MachineConfig], info: ValidationInfo
    ) -> list[MachineConfig]:
        for machine in machines:
            _check_identifier(machine.name, "machine name")
        require_unique_names(machines, "machine")
        devices = {d.name: d for d in info.data.get("devices") or []}
        if not devices:
            return machines  # the devices are wrong: their own errors say so
        used: dict[tuple[str, str], str] = {}
        for machine in machines:
            device = devices.get(machine.device)
            if device is None:
                raise ValueError(f"machine {machine.name!r}: no device named {machine.device!r}"
                                 + _did_you_mean(machine.device, list(devices)))
            tags = {t.name: t for t in device.tags}
            for role, tag in machine.tags().items():
                if tag not in tags:
                    raise ValueError(f"machine {machine.name!r}: {role} {tag!r} is not a tag of "
                                     f"device {device.name!r}" + _did_you_mean(tag, list(tags)))
                if role in ("energy_counter_tag", "cycle_counter_tag") and not tags[tag].counter:
                    raise ValueError(f"machine {machine.name!r}: {role} {tag!r} must be marked "
                                     f"`counter: true` on device {device.name!r}")
                other = used.setdefault((device.name, tag), f"{machine.name}.{role}")
                if other != f"{machine.name}.{role}":
                    raise ValueError(f"machine {machine.name!r}: {role} {tag!r} is already "
                                     f"used as {other}")
        return machines

    def machines_of(self, device: str) -> list[MachineConfig]:
        return [m for m in self.machines if m.device == device]

    def sole_machine_of(self, device: str) -> str | None:
        """The device's machine when it has exactly one: the one a rule's `while_states`
        reads when the rule names none."""
        machines = self.machines_of(device)
        return machines[0].name if len(machines) == 1 else None

    @field_validator("detectors")
    @classmethod
    def _rules_name_known_tags(cls, rules: list[DetectorRule],
                               info: ValidationInfo) -> list[DetectorRule]:
        if "devices" not in info.data:  # the devices are wrong already: reported there
            return rules
        devices = {d.name: [t.name for t in d.tags] for d in info.data["devices"]}
        for i, rule in enumerate(rules):
            # "at [i].key: ..." lets the loader point at the rule's own line.
            if rule.device not in devices:
                raise ValueError(f"at [{i}].device: no device named {rule.device!r}"
                                 + _did_you_mean(rule.device, list(devices)))
            for tag in rule.tags:
                if tag not in devices[rule.device]:
                    raise ValueError(f"at [{i}].tags: device {rule.device!r} has no tag {tag!r}"
                                     + _did_you_mean(tag, devices[rule.device]))
            if isinstance(rule, BandRmsRule):
                device = next(d for d in info.data["devices"] if d.name == rule.device)
                problem = _band_rule_misfit(rule, device)
                if problem:
                    raise ValueError(f"at [{i}].{problem}")
            problem = _gate_misfit(rule, info.data.get("machines"))
            if problem:
                raise ValueError(f"at [{i}].{problem}")
        seen: set[tuple[str, str]] = set()
        for i, (rule, name) in enumerate(zip(rules, rule_names(rules), strict=True)):
            if (rule.device, name) in seen:
                raise ValueError(f"at [{i}].name: device {rule.device!r} has two rules named "
                                 f"{name!r}; give each rule its own name")
            seen.add((rule.device, name))
        return rules

    def rules_of(self, device: str) -> list[tuple[str, DetectorRule]]:
        """A device's detector rules with their effective names, in file order."""
        return [(name, rule) for rule, name in zip(self.detectors, rule_names(self.detectors),
                                                   strict=True) if rule.device == device]

    @property
    def store_path(self) -> Path:
        return self.store.path or self.gateway.state_dir / "events.sqlite"
