"""How the fleet view judges a gateway: its retained status, unless its silence says more."""

from __future__ import annotations

import datetime as dt

from fleet.queries import judged

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)


def test_an_online_gateway_heard_from_lately_is_online() -> None:
    assert judged("online", NOW - 2 * MIN, [NOW - 2 * MIN, NOW - 3 * MIN], NOW) == "online"


def test_an_online_gateway_silent_for_three_heartbeats_is_silent() -> None:
    beats = [NOW - 10 * MIN, NOW - 11 * MIN]  # a heartbeat a minute
    assert judged("online", NOW - 4 * MIN, beats, NOW) == "silent"
    assert judged("online", NOW - 2 * MIN, beats, NOW) == "online", "at least 3 minutes"


def test_the_interval_is_the_gateways_own() -> None:
    hourly = [NOW - 60 * MIN, NOW - 120 * MIN]
    assert judged("online", NOW - 60 * MIN, hourly, NOW) == "online"
    assert judged("online", NOW - 200 * MIN, hourly, NOW) == "silent"
    assert judged("online", NOW - 4 * MIN, None, NOW) == "silent", "60 s without heartbeats"


def test_offline_and_unknown_stay_what_they_are() -> None:
    assert judged("offline", NOW - 600 * MIN, None, NOW) == "offline"
    assert judged("unknown", None, None, NOW) == "unknown"
