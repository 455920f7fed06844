"""OPC UA device configuration: addressing, security rules, poll groups, and `check`'s words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.cli.main import main
from agent.config import load_config
from drivers.opcua.client import poll_plans
from drivers.opcua.config import OpcUaDevice

CONFIG = """\
gateway: {id: gw-1, state_dir: /tmp/edge-agent-test}
mqtt: {host: 127.0.0.1, tls: {enabled: false}}
devices:
  - name: press
    protocol: modbus-tcp
    host: 127.0.0.1
    tags: [{name: p, address: 0, type: uint16}]
  - name: oven
    protocol: opcua
    endpoint: opc.tcp://10.0.0.5:4840
    security: {policy: Basic256Sha256, mode: SignAndEncrypt, username: tech, password: s3cret}
    tags:
      - {name: temp, node: "ns=2;s=Oven.Temp", unit: degC, deadband: {type: absolute, value: 0.5}}
      - {name: door, browse_path: "2:Oven/2:Door", mode: poll, poll_interval_s: 5}
      - {name: recipe, node: "ns=3;i=1001", mode: poll}
"""


def device(**overrides: Any) -> OpcUaDevice:
    data: dict[str, Any] = {"name": "d", "protocol": "opcua", "endpoint": "opc.tcp://h:4840",
                            "tags": [{"name": "a", "node": "ns=2;s=A"}]}
    data.update(overrides)
    return OpcUaDevice.model_validate(data)


def test_devices_of_both_protocols_load_side_by_side(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    devices = load_config(path, environ={}).config.devices
    assert [d.protocol for d in devices] == ["modbus-tcp", "opcua"]
    oven = devices[1]
    assert isinstance(oven, OpcUaDevice)
    assert oven.tags[1].address == "i=85/2:Oven/2:Door"
    assert all(tag.counter_modulus is None for tag in oven.tags)
    assert "s3cret" not in repr(oven)


def test_polled_tags_group_by_period_and_subscribed_tags_are_not_polled() -> None:
    cfg = device(poll_interval_s=2, tags=[
        {"name": "a", "node": "ns=2;s=A", "mode": "poll"},
        {"name": "b", "node": "ns=2;s=B"},
        {"name": "c", "node": "ns=2;s=C", "mode": "poll", "poll_interval_s": 0.5},
        {"name": "d", "node": "ns=2;s=D", "mode": "poll"},
    ])
    assert [(p.interval_s, p.tags) for p in poll_plans(cfg)] == [(2, ("a", "d")), (0.5, ("c",))]


@pytest.mark.parametrize("node", ["ns=2;s=Machine.Temp", "ns=3;i=1001", "i=2258",
                                  "ns=1;g=72962b91-fa75-4ae6-8d28-b404dc7daf63"])
def test_node_ids_in_standard_text_form_are_accepted(node: str) -> None:
    assert device(tags=[{"name": "a", "node": node}]).tags[0].node == node


@pytest.mark.parametrize(("security", "message"), [
    ({"policy": "Basic256Sha256", "mode": "None"}, "policy and mode go together"),
    ({"password": "x"}, "a password needs a username"),
    ({"certificate": "/c.der"}, "certificate and private_key go together"),
    ({"username": "u", "user_certificate": "/u.der", "user_private_key": "/u.pem"},
     "a username or a user_certificate"),
])
def test_inconsistent_security_is_refused(security: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        device(security=security)


def test_deadband_on_a_polled_tag_is_refused() -> None:
    with pytest.raises(ValidationError, match="deadband applies to subscribed tags only"):
        device(tags=[{"name": "a", "node": "ns=2;s=A", "mode": "poll",
                      "deadband": {"type": "percent", "value": 1}}])


def test_stall_threshold_counts_keepalives_and_margin() -> None:
    cfg = device(publishing_interval_s=0.5, keepalive_count=10, stall_intervals=4)
    assert cfg.stall_after_s == 7.0


def test_check_lists_each_opcua_tag_with_its_node_and_mode(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.replace("opc.tcp://10.0.0.5", "opc.tcp://127.0.0.1"))
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("device oven: opcua opc.tcp://127.0.0.1:4840 security Basic256Sha256/SignAndEncrypt, "
            "user tech, 3 tags") in out
    assert "  temp: ns=2;s=Oven.Temp (subscribe, sampling 1 s, queue 1, deadband absolute 0.5" in out
    assert "  door: i=85/2:Oven/2:Door (poll every 5 s)" in out
    assert "FC3 read holding registers 0..0 (1)" in out  # the Modbus device's plan is unchanged
    assert "s3cret" not in out


def test_check_warns_about_unencrypted_opcua_across_the_network(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.replace(
        "{policy: Basic256Sha256, mode: SignAndEncrypt, username: tech, password: s3cret}", "{}"))
    assert main(["check", "-c", str(path)]) == 0
    assert "oven: security mode None towards opc.tcp://10.0.0.5:4840" in capsys.readouterr().err


def test_check_says_subscribed_tags_weigh_changes_not_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    assert main(["check", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert "oven: the window statistics of its subscribed tags (temp) weigh each change" in err
    assert "door" not in err.split("subscribed tags")[1].split(")")[0], "a polled tag is not"


def test_example_configs_commented_opcua_device_is_valid(tmp_path: Path) -> None:
    example = (Path(__file__).resolve().parents[2] / "config" / "example.yaml").read_text()
    start = example.index("  # - name: oven-1")
    end = example.index("\n\n", start)  # the commented device ends at the next blank line
    uncommented = "\n".join(line.replace("  # ", "  ", 1)
                             for line in example[start:end].splitlines())
    path = tmp_path / "example.yaml"
    path.write_text(example[:start] + uncommented + example[end:])
    devices = load_config(path, environ={}).config.devices
    oven = devices[-1]
    assert isinstance(oven, OpcUaDevice) and oven.security.mode == "SignAndEncrypt"
    assert [t.name for t in oven.tags] == ["temp_c", "door_open", "recipe"]
