"""What a SIGHUP reload keeps, starts, stops and refuses (`agent.supervisor.reload.plan_reload`)."""

from __future__ import annotations

from typing import Any

from agent.config import AgentConfig
from agent.supervisor.reload import plan_reload


def device(name: str, port: int = 502, **extra: Any) -> dict[str, Any]:
    return {"name": name, "protocol": "modbus-tcp", "host": "10.0.0.7", "port": port,
            "tags": [{"name": "power_w", "table": "input", "address": 0, "type": "float32"}],
            **extra}


def config(*devices: dict[str, Any], **sections: Any) -> AgentConfig:
    base: dict[str, Any] = {"gateway": {"id": "gw", "state_dir": "/var/lib/edge-agent"},
                            "mqtt": {"host": "broker"}, "devices": list(devices)}
    return AgentConfig.model_validate({**base, **sections})


def test_unchanged_devices_are_kept_changed_ones_restarted_new_ones_started() -> None:
    old = config(device("a"), device("b"), device("gone"))
    new = config(device("a"), device("b", port=503), device("new"))
    plan = plan_reload(old, new)
    assert plan.keep == ["a"]
    assert plan.stop == ["b", "gone"]
    assert plan.start == ["b", "new"]
    assert not plan.mqtt_changed and not plan.refused


def test_a_new_aggregate_window_restarts_every_device() -> None:
    old = config(device("a"), aggregate={"window_s": 60})
    plan = plan_reload(old, config(device("a"), aggregate={"window_s": 10}))
    assert plan.keep == [] and plan.stop == ["a"] and plan.start == ["a"]


def test_mqtt_change_is_noticed_also_for_the_password() -> None:
    old = config(device("a"), mqtt={"host": "broker", "username": "u", "password": "one"})
    same = config(device("a"), mqtt={"host": "broker", "username": "u", "password": "one"})
    other = config(device("a"), mqtt={"host": "broker", "username": "u", "password": "two"})
    assert not plan_reload(old, same).mqtt_changed
    assert plan_reload(old, other).mqtt_changed


def test_a_new_store_path_is_refused_and_the_open_store_kept() -> None:
    old = config(device("a"))
    new = config(device("a"), store={"path": "/data/other.sqlite"}, health={"heartbeat_s": 5})
    plan = plan_reload(old, new)
    assert plan.config.store_path == old.store_path
    assert plan.config.health.heartbeat_s == 5, "the rest of the file still applies"
    assert len(plan.refused) == 1 and "/data/other.sqlite" in plan.refused[0]


def test_gateway_identity_is_kept_until_the_next_start() -> None:
    plan = plan_reload(config(device("a")), config(device("a"), gateway={"id": "other"}))
    assert plan.config.gateway.id == "gw"
    assert [line.split(":")[0] for line in plan.refused] == ["gateway"]


def test_a_device_whose_machine_changed_is_restarted() -> None:
    def machine(running_w: float) -> dict[str, Any]:
        return {"name": "m", "device": "a", "power_tag": "power_w", "idle_above_w": 10,
                "running_above_w": running_w}

    old = config(device("a"), device("b"), machines=[machine(100)])
    plan = plan_reload(old, config(device("a"), device("b"), machines=[machine(200)]))
    assert plan.keep == ["b"] and plan.stop == ["a"] and plan.start == ["a"]
    assert plan_reload(old, config(device("a"), device("b"), machines=[machine(100)])).stop == []


def test_a_changed_detector_rule_restarts_only_its_device() -> None:
    rule = {"device": "a", "kind": "limits", "tags": ["power_w"], "high": 100}
    old = config(device("a"), device("b"), detectors=[rule])
    same = config(device("a"), device("b"), detectors=[rule])
    changed = config(device("a"), device("b"), detectors=[{**rule, "high": 120}])
    assert plan_reload(old, same).keep == ["a", "b"]
    plan = plan_reload(old, changed)
    assert plan.keep == ["b"] and plan.stop == ["a"] and plan.start == ["a"]
    added = plan_reload(old, config(device("a"), device("b"), detectors=[
        rule, {"device": "b", "kind": "stuck", "tags": ["power_w"]}]))
    assert added.keep == ["a"] and added.start == ["b"]


def test_the_remote_section_is_kept_until_the_next_start(tmp_path: Any) -> None:
    from agent.config.signed import new_key_pair

    (tmp_path / "fleet.pub").write_bytes(new_key_pair()[1])
    old = config(device("a"))
    new = config(device("a"), remote={"enabled": True, "trusted_keys": [tmp_path / "fleet.pub"]})
    plan = plan_reload(old, new)
    assert plan.refused == ["remote: enabling, keys and topic apply at the next start"]
    assert plan.config.remote == old.remote and plan.keep == ["a"]


def test_a_changed_device_recreates_a_sparkplug_uplink_for_new_births() -> None:
    spb = {"host": "broker", "format": "sparkplug"}
    old = config(device("a"), mqtt=spb)
    assert plan_reload(old, config(device("a"), device("b"), mqtt=spb)).mqtt_changed
    assert not plan_reload(old, config(device("a"), mqtt=spb)).mqtt_changed
    assert not plan_reload(config(device("a")), config(device("a"), device("b"))).mqtt_changed
