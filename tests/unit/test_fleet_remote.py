"""The fleet side of remote configuration, without a broker or a database: the signing key
written safely, the version rule, and what is refused here before anything is signed."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from agent.config.loader import ConfigError
from agent.config.signed import load_private_key, load_public_keys, open_signed, sign
from fleet.cli import main
from fleet.config import load_fleet_config
from fleet.remote import (
    Refusal,
    check_command,
    check_config,
    choose_version,
    command_body,
    command_topic,
    config_body,
)

GATEWAY_FILE = """\
gateway: {id: gw-1, site: plant}
mqtt: {host: broker.example, tls: false, username: gw-1, password: "${MQTT_PASSWORD}"}
remote: {enabled: true, trusted_keys: [/etc/edge-agent/fleet.key.pub]}
devices:
  - name: press
    protocol: modbus-tcp
    host: 10.0.0.5
    tags:
      - {name: power_w, address: 30001, type: float32}
"""


@pytest.fixture(autouse=True)
def _logging_reset() -> Iterator[None]:
    """`main` points structlog at this test's captured stderr: put it back for the next."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def fleet_yaml(tmp_path: Path) -> Path:
    """A fleet configuration whose broker and database nobody listens on: what is refused
    here never gets as far as either."""
    path = tmp_path / "fleet.yaml"
    path.write_text("mqtt: {host: 127.0.0.1, port: 9, tls: false}\n"
                    "database: {dsn: 'host=127.0.0.1 port=9 connect_timeout=1'}\n")
    return path


@pytest.fixture
def key(tmp_path: Path) -> Path:
    assert main(["keys", "new", "--out", str(tmp_path / "fleet.key")]) == 0
    return tmp_path / "fleet.key"


def test_keys_new_writes_a_private_key_only_its_owner_reads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys" / "fleet.key"
    out.parent.mkdir()
    assert main(["keys", "new", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    load_private_key(out)
    [kid] = load_public_keys([out.with_name("fleet.key.pub")])
    assert f"key id {kid}" in printed
    assert "trusted_keys: [/etc/edge-agent/fleet.key.pub]" in printed


def test_keys_new_never_overwrites_a_key(key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = key.read_bytes(), key.with_name("fleet.key.pub").read_bytes()
    capsys.readouterr()
    assert main(["keys", "new", "--out", str(key)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert (key.read_bytes(), key.with_name("fleet.key.pub").read_bytes()) == before
    # Only the public half there: nothing is written either, not even the private key.
    lone = key.with_name("other.key")
    lone.with_name("other.key.pub").write_text("someone's")
    assert main(["keys", "new", "--out", str(lone)]) == 2
    assert not lone.exists()


def test_the_version_is_one_above_the_largest_known_unless_given() -> None:
    assert choose_version(None, None) == 1
    assert choose_version(7, None) == 8
    assert choose_version(7, 3) == 3, "--version: a gateway whose state was reset"
    with pytest.raises(Refusal, match="positive"):
        choose_version(7, 0)


def write(tmp_path: Path, text: str, name: str = "gw-1.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_file_is_checked_as_the_gateway_reads_it(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQTT_PASSWORD", raising=False)
    path = write(tmp_path, GATEWAY_FILE)
    checked = check_config(path, "gw-1")
    assert checked.text == GATEWAY_FILE, "sent as written: ${MQTT_PASSWORD} is the gateway's"
    assert checked.sha256 == hashlib.sha256(GATEWAY_FILE.encode()).hexdigest()
    assert (checked.site, checked.topic) == ("plant", "{site}/{gateway}/_command")


def test_an_invalid_file_is_refused_with_its_problems(
        tmp_path: Path, fleet_yaml: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GATEWAY_FILE.replace("type: float32", "type: flaot32")
                 .replace("host: 10.0.0.5", "host: 10.0.0.5\n    pol_s: 1"))
    with pytest.raises(Refusal) as caught:
        check_config(path, "gw-1")
    lines = caught.value.lines
    assert any(line.startswith(f"{path}:8: devices[0].pol_s") for line in lines), lines
    assert any(line.startswith(f"{path}:10: devices[0].tags[0].type") for line in lines), lines
    capsys.readouterr()
    assert main(["config", "push", "gw-1", str(path), "--key", str(key), "-c",
                 str(fleet_yaml)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:10: devices[0].tags[0].type" in err and "invalid_config" in err, err


def test_another_gateways_file_is_refused(tmp_path: Path, fleet_yaml: Path, key: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GATEWAY_FILE)
    capsys.readouterr()
    assert main(["config", "push", "gw-2", str(path), "--key", str(key), "-c",
                 str(fleet_yaml)]) == 2
    assert "gateway.id is 'gw-1', not 'gw-2'" in capsys.readouterr().err


def test_a_file_the_gateway_could_not_be_reached_after_is_refused(
        tmp_path: Path, fleet_yaml: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    off = write(tmp_path, GATEWAY_FILE.replace("enabled: true", "enabled: false"))
    with pytest.raises(Refusal, match="remote.enabled is false"):
        check_config(off, "gw-1")
    elsewhere = write(tmp_path, GATEWAY_FILE.replace(
        "remote: {", "remote: {topic: 'cmd/{gateway}', "))
    capsys.readouterr()
    assert main(["config", "push", "gw-1", str(elsewhere), "--key", str(key), "-c",
                 str(fleet_yaml)]) == 2
    assert "remote.topic is 'cmd/{gateway}'" in capsys.readouterr().err


def test_commands_the_agent_does_not_answer_are_refused_here() -> None:
    assert check_command(["relearn", "press-1", "temp-unusual"]) == (
        "relearn", "press-1", "temp-unusual")
    assert check_command(["buffer", "stats"]) == ("buffer", "stats")
    for words in (["relearn"], ["reboot"], ["status", "now"], ["buffer"]):
        with pytest.raises(Refusal):
            check_command(words)


def test_the_bodies_open_on_the_gateway(key: Path) -> None:
    private = load_private_key(key)
    trusted = load_public_keys([key.with_name("fleet.key.pub")])
    now = 1_800_000_000_000_000_000
    config = open_signed(sign(config_body("gw-1", 4, GATEWAY_FILE, 3600, now), private),
                         trusted, "gw-1", now + 1)
    assert (config.type, config.version, config.config) == ("config", 4, GATEWAY_FILE)
    assert config.expires_ns == now + 3600 * 10**9
    command = open_signed(sign(command_body("gw-1", ("reload",), 60, now), private),
                          trusted, "gw-1", now)
    assert (command.command, command.version, command.issued_ns) == (("reload",), now, now)


def test_the_command_topic_needs_a_site_only_when_it_names_one(tmp_path: Path) -> None:
    assert command_topic("{site}/{gateway}/_command", "gw-1", "plant") == "plant/gw-1/_command"
    assert command_topic("cmd/{gateway}", "gw-1", None) == "cmd/gw-1"
    with pytest.raises(Refusal, match="give --site"):
        command_topic("{site}/{gateway}/_command", "gw-1", None)
    bad = write(tmp_path, "mqtt: {host: b, command_topic: '{site}/all/_command'}\n"
                "database: {dsn: x}\n", "fleet.yaml")
    with pytest.raises(ConfigError, match=r"fleet.yaml:1: mqtt.command_topic.*\{gateway\}"):
        load_fleet_config(bad)
