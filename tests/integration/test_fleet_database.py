"""The fleet database against a real PostgreSQL of the test's own: each event stored once,
typed views, the retained status, garbage kept aside, and the completeness report."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from agent.events import Event, encode
from agent.testing.postgres import postgres_bin_dir
from agent.uplink.presence import Presence, encode_presence
from fleet.completeness import completeness, format_report
from fleet.database import FleetDatabase, Received

pytestmark = pytest.mark.skipif(postgres_bin_dir() is None,
                                reason="PostgreSQL's server is not installed")
T0 = 1_796_000_000_000_000_000
S = 1_000_000_000


def message(kind: str, seq: int, data: dict[str, Any], *, gateway: str = "gw-1",
            device: str = "press") -> Received:
    return Received(f"plant/{gateway}/{device}/{kind}",
                    encode(Event(kind, device, T0 + seq * S, data), gateway=gateway, seq=seq))


def window(seq: int) -> Received:
    return message("window", seq, {"start_ns": T0, "end_ns": T0 + seq * S, "tags": {
        "power_w": {"n": 10, "bad": 0, "unit": "W", "min": 1.0, "max": 3.0, "mean": 2.0,
                    "std": 0.5, "last": 2.5}}})


def heartbeat(seq: int, store_id: str) -> Received:
    return message("heartbeat", seq, {"reason": "periodic", "uptime_s": 1.0, "version": "0.1.0",
                                      "config_sha256": "ab" * 32, "devices": {},
                                      "store": {"id": store_id, "depth": 0, "last_seq": seq}},
                   device="_gateway")


def rows(db: FleetDatabase, query: str) -> list[tuple[Any, ...]]:
    return db.conn.execute(query).fetchall()


def test_each_event_is_stored_once_and_a_resend_is_counted(db: FleetDatabase) -> None:
    first = [heartbeat(1, "store-a"), *(window(seq) for seq in range(2, 6))]
    assert db.store(first).stored == 5
    six = window(6)
    again = db.store([first[2], six, six])  # a resend, and a new one twice in one batch
    assert (again.stored, again.duplicates) == (1, 2)
    assert rows(db, "SELECT count(*) FROM events") == [(6,)]
    assert rows(db, "SELECT gateway, store, count FROM duplicates") == [("gw-1", "store-a", 2)]
    assert rows(db, "SELECT tag, mean, last FROM windows WHERE seq = 3") == [("power_w", 2.0, 2.5)]
    assert rows(db, "SELECT DISTINCT store FROM event_ids WHERE seq > 1") == [("store-a",)]


def test_events_land_in_monthly_partitions(db: FleetDatabase) -> None:
    later = Received("plant/gw-1/press/window", encode(
        Event("window", "press", T0 + 40 * 86400 * S, {"tags": {}}), gateway="gw-1", seq=2))
    db.store([window(1), later])
    partitions = [str(r[0]) for r in rows(db, "SELECT tableoid::regclass FROM events ORDER BY seq")]
    assert len(set(partitions)) == 2 and all(p.startswith("events_") for p in partitions)


def test_the_status_keeps_the_newest_and_garbage_is_kept_aside(db: FleetDatabase) -> None:
    def status(state: str, time_ns: int) -> Received:
        return Received("plant/gw-1/_gateway/status", encode_presence(
            Presence("gw-1", state, "0.1.0", "cd" * 32, time_ns)))  # type: ignore[arg-type]

    result = db.store([status("online", T0 + 10 * S), status("offline", T0 + 5 * S),
                       Received("plant/gw-1/press/window", b"\x93garbage")])
    assert (result.statuses, result.rejected) == (2, 1)
    assert rows(db, "SELECT status FROM gateway_status") == [("online",)]
    [(topic, error)] = rows(db, "SELECT topic, error FROM rejected")
    assert topic == "plant/gw-1/press/window" and error


def test_completeness_explains_what_the_agent_accounted_for(db: FleetDatabase) -> None:
    made = [heartbeat(1, "store-a"), *(window(s) for s in (2, 3, 6, 7, 9, 10))]
    made.append(message("store_health", 11, {"dropped": {"window": 2},
                                              "dropped_seqs": {"window": [[4, 5]]},
                                              "compacted": 0, "bytes": 1, "max_bytes": 2},
                        device="_gateway"))
    made += [window(15), message("store_health", 16, {"seq_skipped": [12, 14], "store": "store-a"},
                                 device="_gateway"),
             message("windows_lost", 17, {"windows": [{"dev": "press", "start_ns": T0,
                                                        "window_s": 60.0}],
                                           "saved_ns": T0, "until_ns": T0, "lost_total": 1},
                     device="_gateway")]
    db.store(made)
    [report] = completeness(db.conn)
    assert report.store == "store-a"
    assert report.received == [(1, 3), (6, 7), (9, 11), (15, 17)]
    assert report.explained() == [
        ((4, 5), "dropped by the agent (window)"),
        ((12, 14), "lost at a power cut of the gateway: not yet acknowledged by the broker")]
    assert report.unexplained() == [(8, 8)]
    text = "\n".join(format_report(report))
    assert "missing 8: UNEXPLAINED" in text and "1 of 6 missing events unexplained" in text
    moment = dt.datetime.fromtimestamp(T0 / 1e9, dt.UTC)
    assert f"window lost at a power cut (it had no seq): press from {moment:%Y-%m-%d %H:%M:%S} " \
        "UTC (60 s)" in text
    since = completeness(db.conn, since=dt.datetime.fromtimestamp((T0 + 6 * S) / 1e9, dt.UTC))
    assert since[0].gaps() == [(8, 8), (12, 14)]


def test_an_event_whose_id_names_its_store_needs_no_heartbeat_first(db: FleetDatabase) -> None:
    def stored_by(store: str, seq: int) -> Received:
        return Received("plant/gw-2/press/window", encode(
            Event("window", "press", T0 + seq * S, {}), gateway="gw-2", seq=seq, store=store))
    # A backlog arrives after live events: the store of each is in its own id.
    db.store([stored_by("00000000000000bb", 5), stored_by("00000000000000aa", 1),
              stored_by("00000000000000bb", 1)])
    reports = {r.store: r.received for r in completeness(db.conn, "gw-2")}
    assert reports == {"00000000000000aa": [(1, 1)], "00000000000000bb": [(1, 1), (5, 5)]}


def test_unsynced_events_get_their_true_time_whichever_comes_first(db: FleetDatabase) -> None:
    wrong = 86_400 * S  # a gateway that booted believing it is 2 January 1970

    def unsynced(seq: int, mono_s: int, boot: str = "boot-1") -> Received:
        event = Event("window", "press", wrong + mono_s * S,
                      {"start_ns": wrong + (mono_s - 1) * S, "end_ns": wrong + mono_s * S},
                      mono_ns=mono_s * S)
        return Received("plant/gw-3/press/window", encode(event, gateway="gw-3", seq=seq,
                                                          boot=boot, store="00000000000000cc"))
    clock = Received("plant/gw-3/_gateway/clock", encode(
        Event("clock", "_gateway", T0, {"boot": "boot-1", "mono": 100 * S}), gateway="gw-3",
        seq=3, store="00000000000000cc"))
    db.store([unsynced(1, 40), unsynced(2, 50, boot="boot-0")])  # before the clock event
    db.store([clock, unsynced(4, 130)])  # the clock event, and one made before it sent after
    got = rows(db, "SELECT seq, time_ns, clock, (data->>'start_ns')::bigint FROM events "
                   "WHERE gateway = 'gw-3' AND kind = 'window' ORDER BY seq")
    assert got == [(1, T0 - 60 * S, "corrected", T0 - 61 * S),
                   (2, wrong + 50 * S, "unsynced", wrong + 49 * S),  # another boot: as it was
                   (4, T0 + 30 * S, "corrected", T0 + 29 * S)]
    moved = rows(db, "SELECT tableoid::regclass::text, time FROM events WHERE seq = 1 "
                     "AND gateway = 'gw-3'")
    assert moved == [("events_2026_11", dt.datetime.fromtimestamp((T0 - 60 * S) / 1e9, dt.UTC))], \
        "moved from the partition of January 1970 to its true month"
    assert rows(db, "SELECT time FROM event_ids WHERE seq = 1 AND gateway = 'gw-3'") == \
        [(moved[0][1],)]


def test_a_message_the_database_refuses_is_set_aside_not_the_batch(db: FleetDatabase) -> None:
    refused = message("window", 2, {}, device="press\x00")  # PostgreSQL text holds no NUL
    result = db.store([window(1), refused, window(3),
                       message("anomaly", 4, {"score": float("nan"), "raw": b"\x01\xff"})])
    assert (result.stored, result.rejected) == (3, 1)
    [(topic, error)] = rows(db, "SELECT topic, error FROM rejected")
    assert topic == "plant/gw-1/press/window" and "DataError" in error, error
    [(data,)] = rows(db, "SELECT data FROM events WHERE kind = 'anomaly'")
    assert data == {"score": None, "raw": "01ff"}, "JSON has no NaN nor bytes"
