"""What a person sees of a Sparkplug gateway: `edge-agent tail` lines and `check --explain`."""

from __future__ import annotations

from pathlib import Path

from test_sparkplug_session import NOW, WINDOW, _config, _event, _node

from agent.cli.tail_sparkplug import SparkplugReader, format_message, sparkplug_filter
from agent.store.sharing import explain
from agent.uplink.sparkplug.explain import explain_sparkplug


def test_tail_names_data_through_the_births_it_saw(tmp_path: Path) -> None:
    node, reader = _node(tmp_path), SparkplugReader()
    for birth in node.births(4, NOW):
        reader.read(birth.topic, birth.payload)
    [ddata] = node.translate(_event("window", WINDOW), historical=True, now_ms=NOW) or []
    message = reader.read(ddata.topic, ddata.payload)
    assert message is not None and message["type"] == "DDATA" and message["device"] == "press"
    values = {m["name"]: m["value"] for m in message["metrics"]}
    assert values["power_w/mean"] == 2.0 and values["energy_kwh/increase"] == 0.5
    line = format_message(message)
    assert line.startswith("2025-11-23T12:13:20.000Z gw-1/press DDATA seq=3: power_w/mean=2.0 (hist)")
    assert reader.read("lab/gw-1/press/window", b"") is None


def test_tail_without_the_birth_shows_aliases(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.births(0, NOW)
    [ddata] = node.translate(_event("window", WINDOW), historical=False, now_ms=NOW) or []
    message = SparkplugReader().read(ddata.topic, ddata.payload)
    assert message is not None and format_message(message).split(": ", 1)[1].startswith("#")


def test_tail_subscribes_to_the_node_and_its_devices() -> None:
    assert sparkplug_filter("plant", "gw-1") == "spBv1.0/plant/+/gw-1/#"


def test_explain_names_the_sparkplug_topics_and_metrics_but_no_unshared_tag(
        tmp_path: Path) -> None:
    config = _config(tmp_path)
    text = "\n".join(explain(config, sparkplug=explain_sparkplug))
    assert "spBv1.0/lab/NBIRTH/gw-1" in text and "spBv1.0/lab/NDEATH/gw-1" in text
    assert "spBv1.0/lab/DDATA/gw-1/press" in text and "spBv1.0/lab/DDATA/gw-1/pump" in text
    assert "power_w/{mean, min, max, last, std, count, bad, value, quality}" in text
    assert "Rules/overpower/{active" in text
    assert "secret" not in text.replace("Never leaves the site: press.secret", "")
    assert "lab/gw-1/press/window" not in text, "no envelope topic in sparkplug format"
