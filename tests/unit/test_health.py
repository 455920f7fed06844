"""The heartbeat's content and how `edge-agent status` prints it (`agent.service.status`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent import __version__
from agent.service.status import format_status, heartbeat_data, process_usage
from agent.store import StoreStats

NS = 1_000_000_000


def stats(**changes: Any) -> StoreStats:
    base = StoreStats(depth=12, bytes=3400, file_bytes=90_000, oldest_time_ns=100 * NS,
                      newest_time_ns=130 * NS, last_seq=77, by_kind={"window": 12},
                      dropped={"window": 3}, compacted=5, store_id="3f2a9c0011223344")
    return replace(base, **changes)


def beat(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "reason": "periodic", "uptime_s": 12.34567, "config_sha256": "ab" * 32,
        "devices": {"compressor-1": ("up", ""), "meter": ("down", "unreachable")},
        "stats": stats(), "pending": 4, "uplink_state": "unreachable",
        "uplink_error": "unreachable: Connection refused", "inflight": 2, "cpu_s": 1.23456,
        "rss_bytes": 50 * 2**20, "now_ns": 160 * NS, "bytes_written": 4096,
        "bytes_written_per_day": 1_000_000.4, "windows_lost": 2,
    }
    args.update(changes)
    return heartbeat_data(**args)


def test_heartbeat_holds_devices_store_uplink_and_process() -> None:
    data = beat()
    assert data["reason"] == "periodic" and data["version"] == __version__
    assert data["uptime_s"] == 12.346 and data["config_sha256"] == "ab" * 32
    assert data["devices"] == {"compressor-1": {"status": "up", "reason": ""},
                               "meter": {"status": "down", "reason": "unreachable"}}
    assert data["store"] == {"id": "3f2a9c0011223344", "depth": 12, "pending": 4, "oldest_age_s": 60.0, "bytes": 3400,
                             "last_seq": 77, "dropped": {"window": 3}, "compacted": 5,
                             "bytes_written": 4096, "bytes_written_per_day": 1_000_000}
    assert data["uplink"] == {"state": "unreachable",
                              "last_error": "unreachable: Connection refused", "inflight": 2}
    assert data["process"] == {"cpu_s": 1.235, "rss_bytes": 50 * 2**20}


def test_empty_store_has_no_oldest_age() -> None:
    data = beat(stats=stats(depth=0, oldest_time_ns=None, newest_time_ns=None))
    assert data["store"]["oldest_age_s"] is None


def test_heartbeat_is_msgpack_native() -> None:
    import msgpack

    data = beat()
    assert msgpack.unpackb(msgpack.packb(data), raw=False) == data


def test_process_usage_reads_this_process() -> None:
    cpu_s, rss = process_usage()
    assert cpu_s > 0 and rss > 10 * 2**20


def test_status_is_printed_one_fact_per_line() -> None:
    doc = {"gateway": "gw-1", "pid": 4242, "config": "/etc/edge-agent/config.yaml", **beat()}
    text = "\n".join(format_status(doc))
    assert "gw-1 (pid 4242" in text and "up 12s" in text
    assert "unreachable, 2 in flight; last error: unreachable: Connection refused" in text
    assert "12 events waiting (4 not yet on disk), oldest 1m 0s ago" in text
    assert "3 dropped, 5 compacted" in text
    assert "meter" in text and "down (unreachable)" in text


def test_status_says_whether_each_device_learns_or_has_learned_and_since_when() -> None:
    import datetime as dt
    import time

    def ago(seconds: float) -> str:
        moment = dt.datetime.fromtimestamp(time.time() - seconds, tz=dt.UTC)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")

    doc = {"gateway": "gw-1", "pid": 1, "config": "c.yaml", **beat(devices={
        "compressor-1": ("up", ""), "meter": ("down", "unreachable"), "pump": ("up", ""),
        "fan": ("up", "")}), "detectors": {
        "compressor-1": {"state": "learning", "since": ago(185), "rows": 3, "learned_rows": 1,
                         "rules": {"level": {"state": "learning", "since": ago(185),
                                             "warmup": {"seen": 12, "needed": 30,
                                                        "unit": "samples"}},
                                   "agree": {"state": "learned", "since": ago(100)}}},
        "meter": {"state": "learned", "since": ago(2 * 86400 + 3600), "rows": 1,
                  "learned_rows": 1},
        "pump": {"state": "learned", "since": None, "rows": 1, "learned_rows": 1}}}
    lines = format_status(doc)
    compressor = next(line for line in lines if "compressor-1" in line)
    # The warm-up in samples, as `warmup_samples` counts it: not rows of the state file.
    assert compressor.endswith("ago): level 12 of 30 warm-up samples"), compressor
    assert f"up; rules learning since {ago(185)} (3m" in compressor
    meter = next(line for line in lines if "meter" in line)
    assert "down (unreachable); rules learned since" in meter and "(2d 1h 0m ago)" in meter
    pump = next(line for line in lines if "pump" in line)
    assert pump.endswith("up; rules learned (since when: not recorded, saved by an earlier "
                         "version)")
    assert next(line for line in lines if "fan" in line).endswith("up")  # no rule learns


def test_prometheus_text_has_the_same_numbers() -> None:
    from agent.service.prometheus import render

    text = render(beat(), 'gw-"1"')
    lines = text.splitlines()
    info = (f'edge_agent_info{{gateway="gw-\\"1\\"",version="{__version__}",'
            f'config_sha256="{"ab" * 32}"}} 1.0')
    assert info in lines
    assert 'edge_agent_device_up{device="compressor-1"} 1.0' in lines
    assert 'edge_agent_device_up{device="meter"} 0.0' in lines
    assert "edge_agent_store_depth 12.0" in lines
    assert "edge_agent_store_oldest_age_seconds 60.0" in lines
    assert 'edge_agent_store_dropped_total{kind="window"} 3.0' in lines
    assert 'edge_agent_uplink_state{state="unreachable"} 1.0' in lines
    assert 'edge_agent_uplink_state{state="connected"} 0.0' in lines
    assert "process_resident_memory_bytes 52428800.0" in lines
    assert "# TYPE edge_agent_store_compacted_total counter" in lines
    assert "edge_agent_windows_lost_total 2.0" in lines
    samples = [line for line in lines if not line.startswith("#")]
    assert all(len(line.rsplit(" ", 1)) == 2 for line in samples)


def test_status_names_the_rules_waiting_for_their_machine_state() -> None:
    doc = {"gateway": "gw-1", "pid": 1, "config": "c.yaml",
           **beat(devices={"pump": ("up", ""), "fan": ("up", "")}),
           "paused": {"pump": {"vib": "pump in running", "agree": "pump in running",
                               "idle-power": "pump in idle (settled 30 s)"}}}
    lines = format_status(doc)
    pump = next(line for line in lines if "pump" in line)
    assert pump.endswith("up; waiting for pump in running: vib, agree; waiting for pump in "
                         "idle (settled 30 s): idle-power")
    assert next(line for line in lines if "fan" in line).endswith("up")


def test_the_stores_own_bytes_written_are_reported_for_card_wear() -> None:
    from agent.service.prometheus import render
    from agent.service.status import format_status

    data = beat()
    text = render(data, "gw-1")
    assert "edge_agent_store_written_bytes_total 4096.0" in text
    assert "edge_agent_store_written_bytes_per_day 1000000.0" in text
    doc = {**data, "gateway": "gw-1", "pid": 1, "config": "x.yaml"}
    assert any("4096 bytes written to disk" in line and "1.0 MB a day" in line
               for line in format_status(doc))
