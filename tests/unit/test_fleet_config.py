"""The fleet side's configuration: validated like the agent's, `file:line` messages, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.loader import ConfigError
from fleet.cli import main
from fleet.config import load_fleet_config


def test_a_valid_file_takes_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_DSN", "host=db dbname=fleet")
    path = tmp_path / "fleet.yaml"
    path.write_text("mqtt: {host: broker, tls: false}\ndatabase: {dsn: '${FLEET_DSN}'}\n")
    config = load_fleet_config(path)
    assert config.mqtt.effective_port == 1883 and config.mqtt.group == "edge-fleet"
    assert config.database.dsn.get_secret_value() == "host=db dbname=fleet"


def test_errors_name_the_line_and_never_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("mqtt:\n  host: broker\n  grup: x\n  password: 918273645501\n"
                    "database: {}\ningest: {batch_max_s: .inf}\n")
    with pytest.raises(ConfigError) as caught:
        load_fleet_config(path)
    text = "\n".join(caught.value.lines)
    assert f"{path}:3: mqtt.grup: unknown key 'grup' (did you mean 'group'?)" in text
    assert f"{path}:5: database.dsn: required key 'dsn' is missing" in text
    assert f"{path}:6: ingest.batch_max_s" in text
    assert "918273645501" not in text


def test_the_command_exits_2_on_a_bad_file(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("mqtt: [1, 2]\n")
    assert main(["completeness", "-c", str(path)]) == 2
    assert f"{path}:1: mqtt" in capsys.readouterr().err
