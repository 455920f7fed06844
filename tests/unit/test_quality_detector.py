"""The quality detector: one `quality` event per batch in which some tag's quality class changed."""

from __future__ import annotations

import numpy as np

from agent.detect.quality import QualityChanges
from agent.events import QUALITY, priority_of
from drivers.samples import Quality, SampleBatch

G, U, B = Quality.GOOD, Quality.UNCERTAIN, Quality.BAD


def batch(tags: tuple[str, ...], quality: list[int], texts: dict[str, str] | None = None,
          t: int = 1) -> SampleBatch:
    return SampleBatch("d", tags, np.zeros(len(tags)), np.asarray(quality, dtype=np.uint8), t, t,
                       texts or {})


def test_a_tag_turning_bad_and_back_gives_one_event_each_way() -> None:
    det = QualityChanges("d", ["a", "b"])
    assert det.on_batch(batch(("a", "b"), [G, G])) == []
    assert det.on_batch(batch(("a", "b"), [G, G])) == []
    [bad] = det.on_batch(batch(("a", "b"), [B, G], t=5))
    assert (bad.kind, bad.device, bad.time_ns) == (QUALITY, "d", 5)
    assert bad.data == {"tags": {"a": {"quality": "bad", "previous": "good"}}}
    assert det.on_batch(batch(("a",), [B])) == []  # still bad: no news
    [back] = det.on_batch(batch(("a", "b"), [G, U]))
    assert back.data["tags"] == {"a": {"quality": "good", "previous": "bad"},
                                 "b": {"quality": "uncertain", "previous": "good"}}


def test_first_sample_reports_only_when_not_good() -> None:
    det = QualityChanges("d", ["a", "b"])
    [event] = det.on_batch(batch(("a", "b"), [G, U]))
    assert event.data["tags"] == {"b": {"quality": "uncertain", "previous": None}}


def test_a_tag_missing_from_a_batch_keeps_its_quality() -> None:
    det = QualityChanges("d", ["a", "b"])
    det.on_batch(batch(("a", "b"), [B, G]))
    assert det.on_batch(batch(("b",), [G])) == []


def test_the_last_sample_of_an_array_counts_and_texts_are_good() -> None:
    det = QualityChanges("d", ["arr", "fw"])
    [event] = det.on_batch(batch(("arr", "arr", "fw"), [G, B, B]))
    assert event.data["tags"] == {"arr": {"quality": "bad", "previous": None},
                                  "fw": {"quality": "bad", "previous": None}}
    [event] = det.on_batch(batch((), [], texts={"fw": "1.2"}))
    assert event.data["tags"] == {"fw": {"quality": "good", "previous": "bad"}}


def test_quality_events_rank_with_health_when_the_store_is_full() -> None:
    assert priority_of(QUALITY) == 1


def test_quality_of_a_tag_shared_none_never_leaves_and_explain_names_the_topic() -> None:
    from agent.config.models import AgentConfig
    from agent.store.sharing import SharingPolicy, explain

    config = AgentConfig.model_validate({
        "gateway": {"id": "gw", "site": "s"}, "mqtt": {"host": "h"},
        "devices": [{"name": "d", "protocol": "opcua", "endpoint": "opc.tcp://h:4840",
                     "tags": [{"name": "a", "node": "ns=2;s=A"},
                              {"name": "b", "node": "ns=2;s=B", "share": "none"}]}]})
    det = QualityChanges("d", ["a", "b"])
    [event] = det.on_batch(batch(("a", "b"), [B, B]))
    shared = SharingPolicy(config.devices).apply(event)
    assert shared is not None and set(shared.data["tags"]) == {"a"}
    [only_b] = det.on_batch(batch(("a", "b"), [B, G]))
    assert SharingPolicy(config.devices).apply(only_b) is None
    text = "\n".join(explain(config))
    assert "s/gw/d/quality" in text and "(good, uncertain, bad; no measured values): a" in text
