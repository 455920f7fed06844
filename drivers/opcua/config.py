"""Configuration of an OPC UA device, as a technician writes it in the YAML file.

A tag names its node either by NodeId (`ns=2;s=Machine.Temp`, `ns=3;i=1001`) or by a
browse path from a start node (`2:Compressor/2:Pressure` from Objects, `i=85`), and is either
subscribed (the server pushes changes) or polled (one Read call per poll group).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from drivers.naming import check_tag_name, require_unique_names
from drivers.settings import Settings
from drivers.sharing import Share
from drivers.valid_range import ValidRange

_NODE_ID = re.compile(r"^(ns=\d+;)?(i=\d+|s=.+|g=[0-9A-Fa-f\-]{36}|b=[A-Za-z0-9+/=]+)$")

SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"]
"""The policies asyncua implements that are not deprecated by the OPC UA specification."""
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]




def check_node_id(node: str) -> str:
    """A NodeId in its standard text form, or ValueError saying what one looks like."""
    if not _NODE_ID.match(node):
        raise ValueError(
            f"{node!r} is not a NodeId; write e.g. 'ns=2;s=Machine.Temp' or 'ns=3;i=1001'"
        )
    return node


class Deadband(Settings):
    """Report a change only when it exceeds this (server-side filtering, fewer notifications)."""

    type: Literal["absolute", "percent"]
    """absolute: in the value's unit; percent: of the variable's EURange (the server needs one)."""
    value: float = Field(gt=0)


class OpcUaTag(Settings):
    """One variable of the server, read into the tag `name`."""

    name: str
    node: str | None = None
    """NodeId of the variable (`ns=2;s=Machine.Temp`)."""
    browse_path: str | None = None
    """Path of browse names from `browse_root`, '/'-separated, each `ns:Name` (`2:Compressor/2:Temp`)."""
    browse_root: str = "i=85"
    """Start node of `browse_path` (i=85 is the Objects folder)."""
    mode: Literal["subscribe", "poll"] = "subscribe"
    sampling_interval_s: float = Field(default=1.0, ge=0, le=3600)
    """How often the server samples the variable (subscribe; 0 = as fast as it can)."""
    queue_size: int = Field(default=1, ge=1, le=10_000)
    """Changes the server keeps between two publishes (subscribe); older ones are discarded."""
    deadband: Deadband | None = None
    poll_interval_s: float | None = Field(default=None, gt=0, le=86400)
    """Poll period (poll); the device's `poll_interval_s` when absent. Tags with the same
    period are read in one Read call."""
    max_array_length: int = Field(default=64, ge=1, le=100_000)
    """An array value is a window of samples; longer arrays are cut to this many (the first)."""
    unit: str = ""
    share: Share | None = None
    """What of this tag leaves the site; the device's `share` when absent."""
    counter: bool = False
    """A cumulative value: the agent reports its increase (no rollover for OPC UA values)."""
    valid_range: ValidRange | None = None
    """What the sensor can deliver, `[low, high]` in the tag's unit: a value outside is a
    sensor or wiring fault, a BAD sample for every detector (drivers/valid_range.py)."""

    @field_validator("name")
    @classmethod
    def _name_is_an_identifier(cls, name: str) -> str:
        return check_tag_name(name)

    @field_validator("node", "browse_root")
    @classmethod
    def _node_ids(cls, node: str | None) -> str | None:
        return None if node is None else check_node_id(node)

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaTag:
        if (self.node is None) == (self.browse_path is None):
            raise ValueError(f"tag {self.name!r}: give either node or browse_path (exactly one)")
        if self.mode == "poll" and self.deadband is not None:
            raise ValueError(f"tag {self.name!r}: a deadband applies to subscribed tags only")
        return self

    @property
    def change_deadband(self) -> float | None:
        """None: a subscription's own `deadband` filters changes at the server."""
        return None

    @property
    def address(self) -> str:
        """How the tag names its node, for messages and `check`."""
        if self.node is not None:
            return self.node
        return f"{self.browse_root}/{self.browse_path}"

    @property
    def counter_modulus(self) -> float | None:
        """OPC UA values are typed numbers, not registers of a fixed width: no rollover."""
        return None


class OpcUaSecurity(Settings):
    policy: SecurityPolicy = "None"
    mode: SecurityMode = "None"
    certificate: Path | None = None
    """The client's certificate (DER or PEM); when absent, `<state_dir>/pki/client-cert.der`,
    made the first time a device with a security policy connects."""
    private_key: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    """Kept as a secret: never printed, never logged. Use ${ENV_VAR} or password_file."""
    password_file: Path | None = None
    user_certificate: Path | None = None
    """Log in with this certificate (X.509 user token) instead of a user name."""
    user_private_key: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSecurity:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError(
                "policy and mode go together: both None, or a policy with Sign or SignAndEncrypt"
            )
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together: give both or neither")
        if (self.user_certificate is None) != (self.user_private_key is None):
            raise ValueError("user_certificate and user_private_key go together")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give at most one of password and password_file")
        has_password = self.password is not None or self.password_file is not None
        if has_password and self.username is None:
            raise ValueError("a password needs a username")
        if self.username is not None and self.user_certificate is not None:
            raise ValueError("log in with a username or a user_certificate, not both")
        return self


class OpcUaDevice(Settings):
    """An OPC UA server (a PLC, a retrofit kit, an edge controller)."""

    name: str
    protocol: Literal["opcua"]
    endpoint: str
    """`opc.tcp://HOST:PORT[/path]`."""
    security: OpcUaSecurity = OpcUaSecurity()
    timeout_s: float = Field(default=4.0, gt=0, le=300)
    """For each service call (Read, CreateSubscription...) and for the connection."""
    poll_interval_s: float = Field(default=1.0, gt=0, le=86400)
    publishing_interval_s: float = Field(default=1.0, gt=0, le=3600)
    """How often the server sends the changes of subscribed tags."""
    keepalive_count: int = Field(default=10, ge=1, le=1000)
    """With nothing to send, the server says it is alive every this many publishing intervals."""
    stall_intervals: int = Field(default=5, ge=1, le=1000)
    """A subscription that delivered nothing, not even a keep-alive, for keepalive_count +
    stall_intervals publishing intervals has stalled: it is reported and recreated."""
    share: Share = "aggregates"
    tags: list[OpcUaTag] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _opc_tcp(cls, endpoint: str) -> str:
        if not endpoint.startswith("opc.tcp://"):
            raise ValueError(f"endpoint {endpoint!r} must start with opc.tcp://")
        return endpoint

    @field_validator("tags")
    @classmethod
    def _tag_names_unique(cls, tags: list[OpcUaTag]) -> list[OpcUaTag]:
        require_unique_names(tags, "tag")
        return tags

    @property
    def stall_after_s(self) -> float:
        return (self.keepalive_count + self.stall_intervals) * self.publishing_interval_s
