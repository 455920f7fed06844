"""The `remote:` section: refused without a usable key, and what `edge-agent check` says of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.check import summary
from agent.config import ConfigError, load_config
from agent.config.signed import key_id, load_public_keys, new_key_pair


def write(tmp_path: Path, remote: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""gateway: {{id: gw-7, site: plant, state_dir: {tmp_path}}}
mqtt: {{host: broker}}
devices:
  - {{name: a, protocol: modbus-tcp, host: 10.0.0.7,
     tags: [{{name: power_w, table: input, address: 0, type: float32}}]}}
{remote}""")
    return path


def test_check_says_remote_configuration_is_off_by_default(tmp_path: Path) -> None:
    lines = summary(load_config(write(tmp_path, "")))
    assert "remote configuration: off (remote.enabled: false)" in lines


def test_check_names_the_trusted_keys_and_the_topic(tmp_path: Path) -> None:
    (tmp_path / "fleet.pub").write_bytes(new_key_pair()[1])
    path = write(tmp_path, f"remote: {{enabled: true, trusted_keys: [{tmp_path}/fleet.pub]}}\n")
    [line] = [line for line in summary(load_config(path)) if line.startswith("remote")]
    kid = key_id(next(iter(load_public_keys([tmp_path / "fleet.pub"]).values())))
    assert line.startswith(f"remote configuration: on, signed messages on plant/gw-7/_command "
                           f"from keys {kid} ({tmp_path}/fleet.pub)")
    assert "confirmed within 60 s or rolled back" in line and "refused (no restart)" in line


@pytest.mark.parametrize(("remote", "problem"), [
    ("remote: {enabled: true}\n", "enabled needs at least one file in trusted_keys"),
    ("remote: {enabled: true, trusted_keys: [/nonexistent/fleet.pub]}\n",
     "trusted_keys: /nonexistent/fleet.pub: No such file or directory"),
    ("remote: {enabled: true, trusted_keys: [TMP/junk.pub]}\n",
     "trusted_keys: TMP/junk.pub: not a PEM public key"),
    ("remote: {topic: 'x/{device}'}\n", "the command topic may use only {site} and {gateway}"),
])
def test_an_unusable_remote_section_is_a_config_error(tmp_path: Path, remote: str,
                                                      problem: str) -> None:
    (tmp_path / "junk.pub").write_text("not a key")
    remote, problem = remote.replace("TMP", str(tmp_path)), problem.replace("TMP", str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, remote))
    assert any("config.yaml:6: remote" in line and problem in line
               for line in caught.value.lines), caught.value.lines
