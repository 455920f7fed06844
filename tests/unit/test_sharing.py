"""Data sharing: only what the configuration shares is queued, and --explain says so."""

from __future__ import annotations

import numpy as np

from agent.config.models import AgentConfig
from agent.detect.raw import RawSamples
from agent.events import DEVICE_HEALTH, GATEWAY_DEVICE, SAMPLES, STORE_HEALTH, WINDOW, Event
from agent.store.sharing import SharingPolicy, explain
from drivers.samples import SampleBatch

CONFIG = {
    "gateway": {"id": "gw", "site": "s"},
    "mqtt": {"host": "broker.example"},
    "aggregate": {"window_s": 10},
    "devices": [
        {"name": "press", "protocol": "modbus-tcp", "host": "h", "tags": [
            {"name": "power_w", "address": 0, "type": "uint16", "share": "raw"},
            {"name": "temp_c", "address": 1, "type": "uint16"},
            {"name": "recipe", "address": 2, "type": "uint16", "share": "none"},
            {"name": "pressure_bar", "address": 3, "type": "uint16", "share": "events"},
        ]},
        {"name": "secret", "protocol": "modbus-tcp", "host": "h", "share": "none",
         "tags": [{"name": "x", "address": 0, "type": "uint16"}]},
    ],
}


def policy() -> SharingPolicy:
    return SharingPolicy(AgentConfig.model_validate(CONFIG).devices)


def tags_event(kind: str, device: str = "press") -> Event:
    tags = {t: {"n": 1} for t in ("power_w", "temp_c", "recipe", "pressure_bar")}
    return Event(kind, device, 1, {"start_ns": 0, "tags": tags})


def test_windows_carry_only_tags_shared_as_aggregates_or_raw() -> None:
    shared = policy().apply(tags_event(WINDOW))
    assert shared is not None and set(shared.data["tags"]) == {"power_w", "temp_c"}
    assert shared.data["start_ns"] == 0


def test_samples_carry_only_raw_tags() -> None:
    shared = policy().apply(tags_event(SAMPLES))
    assert shared is not None and set(shared.data["tags"]) == {"power_w"}


def test_the_bad_rows_of_samples_never_name_an_unshared_tag() -> None:
    event = Event(SAMPLES, "press", 1, {"t0_ns": 0, "dt_ms": [0, 5],
                                        "tags": {"power_w": [None, 1.0], "recipe": [None, 2.0]},
                                        "bad": {"power_w": [0], "recipe": [0]}})
    shared = policy().apply(event)
    assert shared is not None and shared.data["bad"] == {"power_w": [0]}
    only_recipe_bad = Event(SAMPLES, "press", 1, {**event.data, "bad": {"recipe": [0]}})
    shared = policy().apply(only_recipe_bad)
    assert shared is not None and "bad" not in shared.data
    assert "recipe" not in str(shared.data)


def test_events_may_name_event_tags_but_never_unshared_ones() -> None:
    shared = policy().apply(tags_event("anomaly"))
    assert shared is not None and set(shared.data["tags"]) == {"power_w", "temp_c", "pressure_bar"}


def test_a_device_shared_as_none_sends_nothing_at_all() -> None:
    p = policy()
    assert p.apply(Event(DEVICE_HEALTH, "secret", 1, {"status": "down"})) is None
    assert p.apply(Event(WINDOW, "secret", 1, {"tags": {"x": {"n": 1}}})) is None
    assert p.apply(Event(DEVICE_HEALTH, "press", 1, {"status": "down"})) is not None
    assert p.apply(Event(STORE_HEALTH, GATEWAY_DEVICE, 1, {"dropped": {}})) is not None


def test_explain_names_every_topic_and_what_stays() -> None:
    text = "\n".join(explain(AgentConfig.model_validate(CONFIG)))
    assert "s/gw/press/window" in text and "power_w, temp_c" in text
    assert "s/gw/press/samples" in text and "every sample of power_w" in text
    assert "secret" not in text.split("Never leaves the site:")[0]
    assert "Never leaves the site: press.recipe, secret.x" in text
    assert "press.pressure_bar" in text.split("Sent only inside events")[1]
    assert "s/gw/_gateway/heartbeat" in text and "s/gw/_gateway/clock" in text
    assert "every 60 s and on change" in text  # the configured health.heartbeat_s


def test_raw_samples_are_batched_per_window_with_bad_ones_as_none() -> None:
    raw = RawSamples("press", ["power_w"], window_s=1.0)
    s = 1_000_000_000
    for i, quality in enumerate([0, 2, 0]):
        batch = SampleBatch("press", ("power_w", "temp_c"), np.array([float(i), 9.0]),
                            np.array([quality, 0], dtype=np.uint8), time_ns=5 * s + i * s // 4,
                            mono_ns=i * s // 4)
        assert raw.on_batch(batch) == []
    [event] = raw.on_tick(s, 7 * s)
    assert event.kind == SAMPLES and event.data["t0_ns"] == 5 * s
    assert event.data["dt_ms"] == [0, 250, 500]
    assert event.data["tags"] == {"power_w": [0.0, None, 2.0]}
    assert raw.flush(8 * s) == []


def test_machine_events_follow_their_signal_tags_share() -> None:
    p = policy()
    for tag, state_sent, energy_sent in (("power_w", True, True), ("pressure_bar", True, False),
                                         ("recipe", False, False)):
        state = Event("state", "press", 1, {"machine": "m", "tag": tag, "to": "idle"})
        energy = Event("energy", "press", 1, {"machine": "m", "tag": tag, "kwh": None})
        assert (p.apply(state) is not None) == state_sent, tag
        assert (p.apply(energy) is not None) == energy_sent, tag


def test_explain_lists_machine_topics() -> None:
    config = {**CONFIG, "machines": [{"name": "press-m", "device": "press", "power_tag": "power_w",
                                      "idle_above_w": 10, "running_above_w": 100}]}
    text = "\n".join(explain(AgentConfig.model_validate(config)))
    assert "s/gw/press/state" in text and "s/gw/press/energy" in text
    assert "machine press-m: every 900 s" in text


def _multivariate_anomaly(tags: list[str]) -> Event:
    """A real `pca` anomaly over `tags` of the press, from its detector (context included)."""
    from agent.config.detection import PcaRule
    from agent.detect.rules import rule_detectors

    rule = PcaRule(kind="pca", device="press", tags=tags, warmup_samples=20, context_samples=3,
                   smoothing_halflife_samples=0, threshold_factor=3.0)
    [detector] = rule_detectors("press", [("health", rule)])
    rng = np.random.default_rng(5)
    for i in range(40):
        load = rng.uniform(0, 1)
        values = np.array([load + rng.normal(0, 0.01) for _ in tags])
        detector.on_batch(SampleBatch("press", tuple(tags), values, np.zeros(len(tags), np.uint8),
                                      i, i))
    values = np.array([1.0] + [0.0] * (len(tags) - 1))  # they no longer agree
    events = detector.on_batch(SampleBatch("press", tuple(tags), values,
                                           np.zeros(len(tags), np.uint8), 50, 50))
    [start] = [e for e in events if e.data["phase"] == "start"]
    return start


def test_anomaly_context_keeps_only_shared_tags_and_never_a_none_one() -> None:
    event = _multivariate_anomaly(["power_w", "recipe", "pressure_bar"])
    assert set(event.data["tags"]) == {"power_w", "recipe", "pressure_bar"}
    shared = policy().apply(event)
    assert shared is not None and set(shared.data["tags"]) == {"power_w", "pressure_bar"}
    assert "recipe" not in repr(shared.data)
    assert len(shared.data["tags"]["pressure_bar"]["before"]) == 3


def test_an_anomaly_only_about_unshared_tags_is_not_sent() -> None:
    event = Event("limit", "press", 1, {"phase": "start", "tags": {"recipe": {"before": [1.0]}}})
    assert policy().apply(event) is None


def test_explain_names_the_anomaly_topics_with_the_tags_they_may_carry() -> None:
    config = {**CONFIG, "detectors": [
        {"device": "press", "kind": "limits", "tags": ["pressure_bar", "recipe"], "high": 9}]}
    text = "\n".join(explain(AgentConfig.model_validate(config)))
    assert "s/gw/press/anomaly, s/gw/press/limit" in text
    line = next(ln for ln in text.splitlines() if "samples just before and after" in ln)
    assert "pressure_bar" in line and "recipe" not in line


def test_explain_states_the_power_cut_loss_bound() -> None:
    config = AgentConfig.model_validate(
        {**CONFIG, "store": {"commit_interval_s": 0.25, "outage_commit_interval_s": 30}})
    [line] = [t for t in explain(config) if t.startswith("Kept until the broker acknowledges")]
    assert "not acknowledged within 0.25 s" in line
    assert "a power cut loses at most the events of the last 0.25 s" in line
    assert "while the broker is unreachable: of the last 30 s, alarms of the last 0.25 s" in line
    assert "each device's open window of at most 10 s of aggregates (named in windows_lost)" \
        in line
