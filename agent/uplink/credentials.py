"""Secrets named by the configuration and read at start: a file, or a systemd credential.

`mqtt.password_file: PATH` reads the file; `mqtt.password_credential: NAME` reads
`$CREDENTIALS_DIRECTORY/NAME`, the file systemd provides for `LoadCredential=NAME:...`
(or `SetCredentialEncrypted=`) in the unit. The value never appears in an error
message, a log line or a repr: errors name the file or credential, not the content.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from agent.config.models import MqttConfig


class CredentialError(Exception):
    """A secret the configuration names cannot be read; the message says which and why."""


def read_secret_file(path: Path, what: str) -> SecretStr:
    """The file's content without its trailing newline (as `echo secret > file` writes it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialError(f"{what}: cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CredentialError(f"{what}: {path} is not UTF-8 text") from exc
    secret = text.rstrip("\r\n")
    if not secret:
        raise CredentialError(f"{what}: {path} is empty")
    return SecretStr(secret)


def read_credential(name: str, environ: Mapping[str, str] | None = None) -> SecretStr:
    """The systemd credential `name`, from the directory systemd names in $CREDENTIALS_DIRECTORY."""
    env = os.environ if environ is None else environ
    what = f"mqtt.password_credential {name!r}"
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise CredentialError(
            f"{what}: $CREDENTIALS_DIRECTORY is not set; run the agent as a systemd service "
            f"with LoadCredential={name} and the secret in /etc/credstore/{name}, or set "
            f"CREDENTIALS_DIRECTORY=/etc/credstore to run it by hand (or use mqtt.password_file)"
        )
    return read_secret_file(Path(directory) / name, what)


def mqtt_password(config: MqttConfig, environ: Mapping[str, str] | None = None) -> SecretStr | None:
    """The MQTT password from wherever the configuration says it is (at most one place)."""
    if config.password_file is not None:
        return read_secret_file(config.password_file, "mqtt.password_file")
    if config.password_credential is not None:
        return read_credential(config.password_credential, environ)
    return config.password
