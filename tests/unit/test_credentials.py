"""Secrets from files and systemd credentials; the status message's encoding."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from agent.config.models import MqttConfig
from agent.uplink.credentials import CredentialError, mqtt_password
from agent.uplink.presence import Presence, PresenceDecodeError, decode_presence, encode_presence

SECRET = "s3cret never-logged"


def config(**keys: object) -> MqttConfig:
    return MqttConfig.model_validate({"host": "broker", "username": "gw-1", **keys})


def test_password_file_loses_only_its_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(f" {SECRET} \n")
    secret = mqtt_password(config(password_file=tmp_path / "pw"))
    assert secret is not None and secret.get_secret_value() == f" {SECRET} "
    assert SECRET not in repr(secret)


def test_credential_is_read_from_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "mqtt-password").write_text(SECRET)
    secret = mqtt_password(config(password_credential="mqtt-password"),
                           environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert secret is not None and secret.get_secret_value() == SECRET


def test_unreadable_password_file_names_the_file_not_the_secret(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CredentialError, match=r"mqtt.password_file: cannot read .*nope: No such"):
        mqtt_password(config(password_file=missing))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CredentialError, match="is empty"):
        mqtt_password(config(password_file=tmp_path / "empty"))


def test_credential_without_systemd_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=r"\$CREDENTIALS_DIRECTORY is not set.*"
                                              r"LoadCredential=mqtt-password and the secret in "
                                              r"/etc/credstore/mqtt-password"):
        mqtt_password(config(password_credential="mqtt-password"), environ={})
    with pytest.raises(CredentialError, match="'mqtt-password': cannot read"):
        mqtt_password(config(password_credential="mqtt-password"),
                      environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_plain_password_is_used_as_given() -> None:
    secret = mqtt_password(config(password=SECRET))
    assert secret is not None and secret.get_secret_value() == SECRET
    assert mqtt_password(config()) is None


def test_status_message_round_trips_with_the_documented_keys() -> None:
    status = Presence(gateway="gw-1", status="online", agent_version="1.2.3",
                           config_sha256="ab" * 32, time_ns=1_763_900_000_000_000_000)
    payload = encode_presence(status)
    assert msgpack.unpackb(payload) == {
        "v": 1, "gw": "gw-1", "kind": "status", "status": "online", "version": "1.2.3",
        "config_sha256": "ab" * 32, "t": 1_763_900_000_000_000_000,
    }
    assert decode_presence(payload) == status
    with pytest.raises(PresenceDecodeError):
        decode_presence(msgpack.packb({"v": 1, "kind": "window"}))
