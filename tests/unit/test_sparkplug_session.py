"""The Edge Node's session without a broker: aliases, `seq` and its wrap, births and deaths,
`bdSeq` kept across restarts, and the metrics each event kind becomes (docs/sparkplug.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config.models import AgentConfig
from agent.events import Envelope
from agent.uplink.sparkplug import codec
from agent.uplink.sparkplug.bdseq import BdSeq
from agent.uplink.sparkplug.codec import DataType
from agent.uplink.sparkplug.mapping import device_specs, node_specs, readings
from agent.uplink.sparkplug.session import EdgeNode, host_online, is_rebirth_request

NOW = 1_763_900_000_000


def _config(tmp_path: Path) -> AgentConfig:
    return AgentConfig.model_validate({
        "gateway": {"id": "gw-1", "site": "lab", "state_dir": str(tmp_path)},
        "mqtt": {"host": "127.0.0.1", "format": "sparkplug"},
        "devices": [
            {"name": "press", "protocol": "modbus-tcp", "host": "127.0.0.1", "tags": [
                {"name": "power_w", "table": "input", "address": 0, "type": "float32",
                 "unit": "W", "valid_range": [0, 9000]},
                {"name": "energy_kwh", "table": "input", "address": 2, "type": "uint32",
                 "counter": True, "unit": "kWh"},
                {"name": "secret", "table": "input", "address": 4, "type": "int16",
                 "share": "none"},
            ]},
            {"name": "pump", "protocol": "modbus-tcp", "host": "127.0.0.1", "tags": [
                {"name": "flow", "table": "input", "address": 0, "type": "int16"}]},
        ],
        "machines": [{"name": "press-1", "device": "press", "power_tag": "power_w",
                      "idle_above_w": 100, "running_above_w": 1000}],
        "detectors": [{"kind": "limits", "device": "press", "tags": ["power_w"],
                       "high": 8000, "name": "overpower"}],
    })


def _node(tmp_path: Path) -> EdgeNode:
    return EdgeNode("lab", "gw-1", device_specs(_config(tmp_path)), node_specs())


def _event(kind: str, data: dict[str, Any], device: str = "press") -> Envelope:
    return Envelope(1, "gw-1", 7, "s-7", kind, device, NOW * 1_000_000, data)


WINDOW = {"start_ns": (NOW - 1000) * 10**6, "end_ns": NOW * 10**6, "tags": {
    "power_w": {"n": 3, "bad": 0, "unit": "W", "min": 1.0, "max": 3.0, "mean": 2.0,
                "std": 0.8, "last": 3.0},
    "energy_kwh": {"n": 3, "bad": 0, "unit": "kWh", "min": 5.0, "max": 5.5, "mean": 5.2,
                   "std": 0.2, "last": 5.5, "increase": 0.5, "resets": 0}}}


def _decode(message: Any) -> codec.Payload:
    return codec.decode(message.payload)


def test_nbirth_has_seq_0_bdseq_rebirth_and_every_metric_by_name_alias_and_type(
        tmp_path: Path) -> None:
    node = _node(tmp_path)
    nbirth, *dbirths = node.births(3, NOW)
    assert nbirth.topic == "spBv1.0/lab/NBIRTH/gw-1" and nbirth.qos == 0
    payload = _decode(nbirth)
    assert payload.seq == 0
    by_name = {m.name: m for m in payload.metrics}
    assert by_name["bdSeq"].value == 3 and by_name["bdSeq"].datatype == DataType.INT64
    assert by_name["Node Control/Rebirth"].value is False
    assert by_name["Gateway/store/depth"].alias is not None
    assert [m.topic for m in dbirths] == ["spBv1.0/lab/DBIRTH/gw-1/press",
                                         "spBv1.0/lab/DBIRTH/gw-1/pump"]
    assert [_decode(m).seq for m in dbirths] == [1, 2]


def test_dbirth_declares_units_and_ranges_and_never_an_unshared_tag(tmp_path: Path) -> None:
    node = _node(tmp_path)
    _, press, _ = node.births(0, NOW)
    metrics = {m.name: m for m in _decode(press).metrics}
    assert metrics["power_w/mean"].properties == {"engUnit": "W", "engLow": 0.0,
                                                  "engHigh": 9000.0}
    assert metrics["power_w/count"].datatype == DataType.INT64
    assert {"energy_kwh/increase", "Machines/press-1/state", "Rules/overpower/active",
            "Health/status"} <= set(metrics)
    assert not any(name.startswith("secret") for name in metrics)
    aliases = [m.alias for m in metrics.values()]
    assert len(set(aliases)) == len(aliases)


def test_aliases_are_unique_across_the_node(tmp_path: Path) -> None:
    node, seen = _node(tmp_path), set()
    for message in node.births(0, NOW):
        for metric in _decode(message).metrics:
            if metric.alias is not None:
                assert metric.alias not in seen
                seen.add(metric.alias)


def test_ddata_uses_the_aliases_of_the_birth(tmp_path: Path) -> None:
    node = _node(tmp_path)
    births = {m.topic: _decode(m) for m in node.births(0, NOW)}
    alias_of = {m.alias: m.name for m in births["spBv1.0/lab/DBIRTH/gw-1/press"].metrics}
    [ddata] = node.translate(_event("window", WINDOW), historical=False, now_ms=NOW) or []
    assert ddata.topic == "spBv1.0/lab/DDATA/gw-1/press" and ddata.qos == 1
    assert ddata.carries_event
    payload = _decode(ddata)
    assert payload.seq == 3
    values = {alias_of[m.alias]: m.value for m in payload.metrics if m.alias is not None}
    assert all(m.name is None for m in payload.metrics)
    assert values["power_w/mean"] == 2.0 and values["power_w/count"] == 3
    assert values["energy_kwh/increase"] == 0.5
    assert payload.metrics[0].timestamp_ms == NOW


def test_seq_wraps_after_255_and_nbirth_starts_again_at_0(tmp_path: Path) -> None:
    node = _node(tmp_path)
    seqs = [_decode(m).seq for m in node.births(0, NOW)]
    for _ in range(300):
        seqs += [_decode(m).seq for m in node.translate(_event("window", WINDOW),
                                                         historical=False, now_ms=NOW) or []]
    assert seqs == [i % 256 for i in range(len(seqs))]
    assert _decode(node.births(1, NOW)[0]).seq == 0


def test_historical_events_flag_every_metric(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.births(0, NOW)
    [ddata] = node.translate(_event("window", WINDOW), historical=True, now_ms=NOW) or []
    assert all(m.historical for m in _decode(ddata).metrics)


def test_device_down_is_ddeath_and_up_again_is_a_new_dbirth(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.births(0, NOW)
    down = _event("device_health", {"status": "down", "reason": "timeout", "detail": "x"})
    [death] = node.translate(down, historical=False, now_ms=NOW) or []
    assert death.topic == "spBv1.0/lab/DDEATH/gw-1/press" and death.carries_event
    assert node.translate(_event("window", WINDOW), historical=False, now_ms=NOW) is None, \
        "no data of a dead device: it waits for the next DBIRTH"
    assert [m.topic for m in node.births(0, NOW)][1:] == ["spBv1.0/lab/DBIRTH/gw-1/pump"], \
        "a dead device is not born with the node"
    up = _event("device_health", {"status": "up", "reason": "", "detail": ""})
    birth, data = node.translate(up, historical=False, now_ms=NOW) or []
    assert birth.message_type == "DBIRTH" and data.message_type == "DDATA"
    status = {m.name: m.value for m in _decode(birth).metrics}["Health/status"]
    assert status == "up", "a birth carries the last values"


def test_a_metric_missing_from_the_birth_brings_a_new_birth_first(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.births(0, NOW)
    odd = _event("window", {"end_ns": NOW * 10**6, "tags": {"added_later": {"n": 1, "mean": 1.0}}})
    birth, data = node.translate(odd, historical=False, now_ms=NOW) or []
    assert birth.message_type == "DBIRTH" and data.message_type == "DDATA"
    assert "added_later/mean" in {m.name for m in _decode(birth).metrics}
    node_event = _event("odd_kind", {"x": 1}, device="_gateway")
    messages = node.translate(node_event, historical=False, now_ms=NOW) or []
    assert messages[0].message_type == "NBIRTH" and messages[-1].message_type == "NDATA"


def test_ndeath_carries_the_bdseq_and_no_seq(tmp_path: Path) -> None:
    death = _node(tmp_path).death(42, NOW)
    payload = _decode(death)
    assert death.topic == "spBv1.0/lab/NDEATH/gw-1" and death.qos == 1
    assert payload.seq is None and [(m.name, m.value) for m in payload.metrics] == [("bdSeq", 42)]


def test_bdseq_counts_per_connection_wraps_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sparkplug" / "bdseq"
    first = BdSeq(path)
    assert [first.next() for _ in range(3)] == [0, 1, 2]
    assert BdSeq(path).next() == 3, "a restart continues"
    path.write_text("255\n")
    assert BdSeq(path).next() == 0, "0-255"


def test_rebirth_request_and_host_state() -> None:
    ask = codec.encode(codec.Payload(NOW, 0, [codec.Metric("Node Control/Rebirth", None,
                                                            DataType.BOOLEAN, True)]))
    assert is_rebirth_request(ask) and not is_rebirth_request(b"\xff\xff")
    assert host_online(b'{"online": true, "timestamp": 5}') == (True, 5)
    assert host_online(b"ONLINE") is None


CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("change", "press", {"tags": {"power_w": {"value": 5.0, "previous": None}}},
     {"power_w/value": 5.0}),
    ("change", "press", {"tags": {"mode": {"value": "auto", "previous": "man"}}},
     {"mode/text": "auto"}),
    ("samples", "press", {"t0_ns": NOW * 10**6, "dt_ms": [0, 250], "tags": {
        "power_w": [1.0, None]}}, {"power_w/value": 1.0}),
    ("quality", "press", {"tags": {"power_w": {"quality": "bad", "previous": "good"}}},
     {"power_w/quality": "bad"}),
    ("state", "press", {"machine": "press-1", "tag": "power_w", "from": "idle",
                        "to": "running", "at_ns": NOW * 10**6, "dwell_s": 12.0},
     {"Machines/press-1/state": "running", "Machines/press-1/previous_state": "idle",
      "Machines/press-1/previous_dwell_s": 12.0}),
    ("energy", "press", {"machine": "press-1", "period": "interval", "end_ns": NOW * 10**6,
                         "complete": True, "kwh": {"idle": 1.5}, "hours": {"idle": 0.25},
                         "total_kwh": 1.5, "starts": 2, "peak_demand_w": None,
                         "totals": {"kwh": {"idle": 9.0}, "operating_h": 3.0, "starts": 7}},
     {"Machines/press-1/kwh/idle": 1.5, "Machines/press-1/hours/idle": 0.25,
      "Machines/press-1/starts": 2, "Machines/press-1/peak_demand_w": None,
      "Machines/press-1/totals/starts": 7, "Machines/press-1/complete": True}),
    ("limit", "press", {"phase": "start", "episode": "e1", "rule": "overpower",
                        "threshold": 8000.0, "bound": "high", "limit": 8000.0,
                        "start_ns": NOW * 10**6, "peak_value": 8100.0, "max_excess": 100.0},
     {"Rules/overpower/active": True, "Rules/overpower/episode": "e1",
      "Rules/overpower/bound": "high", "Rules/overpower/max_excess": 100.0}),
    ("anomaly", "press", {"phase": "end", "episode": "e2", "rule": "z", "score": 4.5,
                          "duration_s": 3.0, "end_ns": NOW * 10**6},
     {"Rules/z/active": False, "Rules/z/score": 4.5, "Rules/z/duration_s": 3.0}),
    ("device_health", "press", {"status": "down", "reason": "timeout", "detail": "no answer"},
     {"Health/status": "down", "Health/reason": "timeout", "Health/detail": "no answer"}),
    ("heartbeat", "_gateway", {"reason": "periodic", "uptime_s": 5.0, "version": "0.1.0",
                               "store": {"depth": 3, "oldest_age_s": None},
                               "uplink": {"state": "connected", "inflight": 1}},
     {"Gateway/uptime_s": 5.0, "Gateway/store/depth": 3, "Gateway/store/oldest_age_s": None,
      "Gateway/uplink/state": "connected"}),
    ("store_health", "_gateway", {"store": "ab12", "dropped": {"window": 4}, "compacted": 2,
                                  "dropped_seqs": {"window": [[1, 4]]}},
     {"Store/id": "ab12", "Store/dropped/window": 4, "Store/compacted": 2,
      "Store/lost_seqs": '{"dropped_seqs": {"window": [[1, 4]]}}'}),
    ("config_applied", "_gateway", {"version": 3},
     {"Events/config_applied": '{"version": 3}'}),
]


@pytest.mark.parametrize(("kind", "device", "data", "expected"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_event_kind_maps_to_its_metrics(
        kind: str, device: str, data: dict[str, Any], expected: dict[str, Any]) -> None:
    got = {r.name: r.value for r in readings(_event(kind, data, device))}
    assert {k: got.get(k, "missing") for k in expected} == expected


def test_configured_events_use_only_metrics_their_birth_declared(tmp_path: Path) -> None:
    """The births from the configuration cover what its events send: no rebirth in passing."""
    node = _node(tmp_path)
    node.births(0, NOW)
    for kind, device, data, _ in CASES:
        if kind == "change" and "mode" in data["tags"] or kind == "anomaly":
            continue  # a text tag and a rule this configuration does not have
        messages = node.translate(_event(kind, data, device), historical=False, now_ms=NOW) or []
        assert [m.message_type for m in messages][-1] in ("DDATA", "NDATA", "DDEATH")
        assert len(messages) == 1, (kind, [m.message_type for m in messages])


def test_send_order_sends_given_events_again_before_the_rest_of_the_backlog() -> None:
    from agent.uplink.send_order import SendOrder

    order = SendOrder(10, replay_rate_per_s=100, now_s=0)
    order.again(6, 7)
    assert order.backlog() == (6, 7)
    order.sent_backlog(7)
    assert order.backlog() == (0, 10)
