"""Send order after outages: live first, backlog oldest first, at the configured rate."""

from __future__ import annotations

from agent.uplink.send_order import SendOrder


def test_events_from_before_a_restart_are_backlog() -> None:
    order = SendOrder(40, replay_rate_per_s=10, now_s=0)
    assert order.live_cursor == 40 and order.backlog() == (0, 40)


def test_a_short_outage_keeps_the_order_a_long_one_makes_backlog() -> None:
    order = SendOrder(0, replay_rate_per_s=10, now_s=0)
    order.sent_live(10)
    order.reconnected(last_committed=15, outage_s=1.0, replay_after_s=5.0)
    assert order.backlog() is None and order.live_cursor == 10
    order.reconnected(last_committed=30, outage_s=60.0, replay_after_s=5.0)
    assert order.backlog() == (10, 30) and order.live_cursor == 30


def test_backlog_ranges_are_replayed_oldest_first() -> None:
    order = SendOrder(5, replay_rate_per_s=10, now_s=0)
    order.sent_live(9)
    order.reconnected(last_committed=12, outage_s=10, replay_after_s=5)
    assert order.backlog() == (0, 5)
    order.sent_backlog(5)
    assert order.backlog() == (9, 12)
    order.sent_backlog(11)
    assert order.backlog() == (11, 12)
    order.range_exhausted()
    assert order.backlog() is None


def test_rate_is_a_token_bucket_with_a_one_second_burst() -> None:
    order = SendOrder(1000, replay_rate_per_s=100, now_s=0)
    assert order.take(500, now_s=0) == 100
    assert order.take(500, now_s=0) == 0
    assert 0 < order.seconds_until_next() <= 0.01
    assert order.take(500, now_s=0.5) == 50
    assert order.take(500, now_s=100) == 100, "idle time does not build a burst beyond 1 s"
