"""The OPC UA driver under the real supervisor, against firmware-sim's asyncua server over sockets.

One server is shared by the module (it starts in about a second); the faults each test
provokes (a stall, bad status codes, a restart) are the failures peers are known for:
no reconnect after a server restart, subscriptions that silently stop delivering.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from agent.acquire.backoff import Backoff
from agent.acquire.task import DeviceHealth, supervise_device
from agent.detect.base import Detector, DetectorChain
from agent.detect.quality import QualityChanges
from agent.detect.raw import RawSamples
from agent.events import DEVICE_HEALTH, QUALITY, SAMPLES
from agent.testing import (
    CapturingSink,
    RecordingDetector,
    start_plc_sim,
    stop_process,
    wait_until_async,
)
from drivers.opcua import OpcUaDevice, OpcUaDriver
from drivers.samples import Quality, SampleBatch
from plc_sim.opcua_server import OpcUaSimServer
from plc_sim.scenarios import SCENARIOS, ScenarioOptions

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[OpcUaSimServer]:
    machine = SCENARIOS["compressor"].factory(ScenarioOptions(seed=3))
    server = OpcUaSimServer("compressor", machine.trace_record, advance=machine.advance,
                            tick_s=0.05)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """plc-sim as a process of its own, to kill or to freeze (SIGSTOP)."""
    with open(tmp_path / "plc-sim.log", "w") as log:
        process, info = start_plc_sim("--opcua-port", "0", stderr=log, protocol="opcua")
    yield process, info
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)
    stop_process(process)


@dataclass
class Run(RecordingDetector, CapturingSink):
    """A device under `supervise_device`: what reached its detector, and its sink (itself)."""


def device(endpoint: str, tags: list[dict[str, Any]], **extra: Any) -> OpcUaDevice:
    return OpcUaDevice.model_validate({
        "name": "comp", "protocol": "opcua", "endpoint": endpoint, "timeout_s": 2,
        "publishing_interval_s": 0.1, "keepalive_count": 3, "stall_intervals": 5,
        "poll_interval_s": 0.2, "tags": tags, **extra})


@pytest.fixture
def start(tmp_path: Path) -> Any:
    tasks: list[asyncio.Task[None]] = []

    def start(config: OpcUaDevice, *detectors: Detector) -> Run:
        """The device under supervise_device; `detectors` run beside the recording one."""
        run = Run()
        detector = DetectorChain([run, QualityChanges(config.name, [t.name for t in config.tags]),
                                  *detectors])
        tasks.append(asyncio.create_task(supervise_device(
            OpcUaDriver(config, tmp_path), detector, run,
            Backoff(initial_s=0.2, max_s=0.5), DeviceHealth(config.name))))
        return run

    yield start
    for task in tasks:
        task.cancel()


async def test_subscribed_and_polled_tags_arrive_as_numbers_texts_and_arrays(
        sim: OpcUaSimServer, start: Any) -> None:
    run = start(device(sim.endpoint, [
        {"name": "power", "node": sim.node_id("active_power_w"), "sampling_interval_s": 0.05},
        {"name": "running", "node": sim.node_id("running")},
        {"name": "firmware", "node": sim.node_id("firmware"), "mode": "poll"},
        {"name": "history", "browse_path": "2:compressor/2:power_history_w", "mode": "poll",
         "max_array_length": 4},
    ]))
    await wait_until_async(lambda: len(run.values("power")) >= 5 and run.values("history"),
                           timeout_s=10, what="subscribed and polled values")
    assert run.health() == [("up", "")]
    assert all(q == Quality.GOOD and 0 < v < 20_000 for v, q in run.values("power"))
    assert run.values("running")[0][0] in (0.0, 1.0)
    polled = next(b for b in run.batches if "firmware" in b.texts)
    assert polled.texts["firmware"] == "1.2"
    assert 1 <= polled.tags.count("history") <= 4  # the array as a window of samples
    # Source timestamps are the server's, and plausible: close to now, never ahead of it.
    now = time.time_ns()
    assert all(now - 10e9 < b.time_ns <= now for b in run.batches)


async def test_bad_status_code_becomes_bad_quality_and_one_quality_event_each_way(
        sim: OpcUaSimServer, start: Any) -> None:
    run = start(device(sim.endpoint, [
        {"name": "temp", "node": sim.node_id("discharge_temp_c"), "sampling_interval_s": 0.05},
        {"name": "current", "node": sim.node_id("motor_current_a"), "mode": "poll"},
    ]))
    await wait_until_async(lambda: run.values("temp"), timeout_s=10, what="first value")
    sim.set_bad("discharge_temp_c")
    sim.set_bad("motor_current_a", 0x40900000)  # UncertainLastUsableValue
    await wait_until_async(lambda: [e for e in run.events if e.kind == QUALITY],
                           timeout_s=10, what="a quality event")
    await wait_until_async(lambda: (Quality.BAD in {q for _, q in run.values("temp")}
                                    and Quality.UNCERTAIN in {q for _, q in run.values("current")}),
                           timeout_s=10, what="bad and uncertain samples")
    sim.set_bad("discharge_temp_c", None)
    sim.set_bad("motor_current_a", None)
    await wait_until_async(lambda: run.values("temp")[-1][1] == Quality.GOOD
                           and run.values("current")[-1][1] == Quality.GOOD,
                           timeout_s=10, what="good samples again")
    changes = [(tag, c["previous"], c["quality"]) for e in run.events if e.kind == QUALITY
               for tag, c in e.data["tags"].items()]
    assert sorted(changes) == sorted([("temp", "good", "bad"), ("temp", "bad", "good"),
                                      ("current", "good", "uncertain"),
                                      ("current", "uncertain", "good")])
    assert run.health() == [("up", "")]  # bad values are not a device fault


async def test_stalled_subscription_is_reported_recreated_and_delivers_again(
        sim: OpcUaSimServer, start: Any) -> None:
    """ThingsBoard gateway #2093 / Telegraf #15074: a subscription stops delivering while the
    session stays up; nothing noticed it."""
    run = start(device(sim.endpoint, [
        {"name": "power", "node": sim.node_id("active_power_w"), "sampling_interval_s": 0.05},
        {"name": "state", "node": sim.node_id("state"), "mode": "poll"},
    ]))
    await wait_until_async(lambda: run.values("power"), timeout_s=10, what="first value")
    assert await sim.stall_subscriptions() >= 1
    await wait_until_async(lambda: ("degraded", "subscription_stalled") in run.health(),
                           timeout_s=10, what="the stall reported")
    count = len(run.values("power"))
    await wait_until_async(lambda: len(run.values("power")) > count + 3, timeout_s=10,
                           what="values from the recreated subscription")
    # One event per change: up, stalled, up again; the polls meanwhile did not hide it.
    assert run.health() == [("up", ""), ("degraded", "subscription_stalled"), ("up", "")]


async def test_subscription_expired_on_the_server_is_recreated(
        sim: OpcUaSimServer, start: Any) -> None:
    """ThingsBoard gateway #2028: a subscription the server dropped is never created again."""
    run = start(device(sim.endpoint, [
        {"name": "power", "node": sim.node_id("active_power_w"), "sampling_interval_s": 0.05}]))
    await wait_until_async(lambda: run.values("power"), timeout_s=10, what="first value")
    assert await sim.expire_subscriptions() >= 1
    await wait_until_async(lambda: len(run.health()) >= 3, timeout_s=15,
                           what="the loss reported and recovered")
    count = len(run.values("power"))
    await wait_until_async(lambda: len(run.values("power")) > count + 3, timeout_s=10,
                           what="values from a new subscription")
    # Nothing told the client: its watchdog noticed the silence.
    assert run.health() == [("up", ""), ("degraded", "subscription_stalled"), ("up", "")]


async def test_server_restart_reconnects_and_resubscribes(
        sim: OpcUaSimServer, start: Any) -> None:
    """ThingsBoard gateway #1641 / Telegraf #14066: no reconnect after a server restart."""
    run = start(device(sim.endpoint, [
        {"name": "power", "node": sim.node_id("active_power_w"), "sampling_interval_s": 0.05},
        {"name": "energy", "node": sim.node_id("energy_wh"), "mode": "poll"},
    ]))
    await wait_until_async(lambda: run.values("power"), timeout_s=10, what="first value")
    await sim.restart(down_s=0.3)
    await wait_until_async(lambda: len(run.health()) >= 3, timeout_s=15,
                           what="down and up again")
    count = len(run.values("power"))
    await wait_until_async(lambda: len(run.values("power")) > count + 3, timeout_s=10,
                           what="subscribed values after the restart")
    health = run.health()
    assert health[0] == ("up", "") and health[-1] == ("up", "")
    assert health[1][0] == "down" and health[1][1] in ("unreachable", "timeout")
    assert all(a != b for a, b in itertools.pairwise(health))  # no repeats


async def test_unknown_nodes_make_the_device_degraded_and_the_other_tags_go_on(
        sim: OpcUaSimServer, start: Any) -> None:
    run = start(device(sim.endpoint, [
        {"name": "power", "node": sim.node_id("active_power_w"), "sampling_interval_s": 0.05},
        {"name": "ghost", "browse_path": "2:compressor/2:no_such_value", "mode": "poll"},
        {"name": "phantom", "node": "ns=2;s=compressor.no_such_node"},
    ]))
    await wait_until_async(lambda: len(run.values("power")) > 3 and run.values("ghost"),
                           timeout_s=10, what="the good tag's values")
    [(status, reason)] = run.health()
    assert (status, reason) == ("degraded", "illegal_address")
    detail = next(e for e in run.events if e.kind == DEVICE_HEALTH).data["detail"]
    assert "tag ghost: no such browse path i=85/2:compressor/2:no_such_value" in detail
    assert "tag phantom: monitored item refused for ns=2;s=compressor.no_such_node" in detail
    assert all(q == Quality.BAD for _, q in run.values("ghost"))  # sent as bad samples


async def test_unreachable_endpoint_is_reported_not_fatal(start: Any) -> None:
    from agent.testing import free_tcp_port

    run = start(device(f"opc.tcp://127.0.0.1:{free_tcp_port()}/", [
        {"name": "x", "node": "ns=2;s=x"}]))
    await wait_until_async(run.health, timeout_s=10, what="a health event")
    assert run.health()[0] == ("down", "unreachable")


async def test_subscribed_numbers_and_booleans_take_the_array_decoder_and_read_as_asyncua_does(
        sim: OpcUaSimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real server's publish responses (doubles and a boolean: mixed layouts) go through
    publish_decode.py, and every value in them is the one asyncua's decoder reads."""
    from asyncua import ua
    from asyncua.common.utils import Buffer
    from asyncua.ua.ua_binary import struct_from_binary

    from drivers.opcua import publish_hook

    seen: list[tuple[bytes, Any]] = []

    def recording(raw: bytes) -> Any:
        changes = decode(raw)
        seen.append((raw, changes))
        return changes

    decode = publish_hook.decode_data_changes
    monkeypatch.setattr(publish_hook, "decode_data_changes", recording)
    driver = OpcUaDriver(device(sim.endpoint, [
        {"name": "power", "node": sim.node_id("active_power_w"), "sampling_interval_s": 0.05},
        {"name": "temp", "node": sim.node_id("discharge_temp_c"), "sampling_interval_s": 0.05},
        {"name": "running", "node": sim.node_id("running")}]), tmp_path)
    await driver.connect()
    try:
        batches: list[SampleBatch] = []
        async with asyncio.timeout(10):
            async for item in driver.stream():
                if isinstance(item, SampleBatch):
                    batches.append(item)
                if sum("temp" in b.tags for b in batches) >= 10:
                    break
        assert driver._hook is not None and driver._hook.fast >= 3
    finally:
        await driver.close()
    assert {"power", "temp", "running"} <= {t for b in batches for t in b.tags}
    decoded = [(raw, c) for raw, c in seen if c is not None]
    assert decoded
    for raw, changes in decoded:
        response = struct_from_binary(ua.PublishResponse, Buffer(raw))
        items = [i for part in response.Parameters.NotificationMessage.NotificationData
                 for i in part.MonitoredItems]
        assert changes.handles.tolist() == [i.ClientHandle for i in items]
        assert changes.values.tolist() == [float(i.Value.Value.Value) for i in items]
        assert changes.status.tolist() == [i.Value.StatusCode.value for i in items]


async def test_lost_publish_responses_stop_the_subscription_only_while_they_are_lost(
        sim: OpcUaSimServer, start: Any) -> None:
    """Field trial (issue 20): the server alive, its publish responses lost for a while, then
    answering again. asyncua waited for ever on the lost PublishRequest: 15 recreated
    subscriptions over 75 s brought nothing, while the polls of the same server went on."""
    config = device(sim.endpoint, [
        {"name": "power", "node": sim.node_id("active_power_w"), "sampling_interval_s": 0.05},
        {"name": "state", "node": sim.node_id("state"), "mode": "poll"},
    ])
    run = start(config)
    await wait_until_async(lambda: run.values("power") and run.values("state"), timeout_s=10,
                           what="first values")
    try:
        assert await sim.drop_publish_responses() >= 1
        await wait_until_async(lambda: ("degraded", "subscription_stalled") in run.health(),
                               timeout_s=10, what="the stall reported")
        polled = len(run.values("state"))
        await wait_until_async(lambda: len(run.values("state")) > polled + 2, timeout_s=5,
                               what="polls while the publish responses are lost")
    finally:
        sim.answer_publish_requests()
    count = len(run.values("power"))
    # Within about one PublishRequest's timeout (stall_after_s) of the server answering again.
    await wait_until_async(lambda: len(run.values("power")) > count + 3,
                           timeout_s=3 * config.stall_after_s + 3,
                           what="subscribed values once the server answers again")
    # The session was kept: the polls never stopped, the device never went down.
    assert run.health() == [("up", ""), ("degraded", "subscription_stalled"), ("up", "")]


async def test_a_session_that_never_publishes_again_is_replaced_by_a_new_one(
        sim: OpcUaSimServer, start: Any) -> None:
    """The last resort: Reads answered, every PublishRequest of the session lost for good,
    however often the subscription is recreated; a new session publishes."""
    config = device(sim.endpoint, [
        {"name": "power", "node": sim.node_id("active_power_w"), "sampling_interval_s": 0.05}])
    run = start(config)
    await wait_until_async(lambda: run.values("power"), timeout_s=10, what="first value")
    try:
        assert await sim.drop_publish_responses() >= 1  # the connections open now, for good
        await wait_until_async(lambda: len(run.health()) >= 4, timeout_s=20,
                               what="stalled, down, up again")
        count = len(run.values("power"))
        await wait_until_async(lambda: len(run.values("power")) > count + 3, timeout_s=10,
                               what="values from the new session")
    finally:
        sim.answer_publish_requests()
    assert run.health()[:4] == [("up", ""), ("degraded", "subscription_stalled"),
                                ("down", "timeout"), ("up", "")]
    down = [e.data["detail"] for e in run.events if e.kind == DEVICE_HEALTH][2]
    assert "also from 2 new subscriptions: opening a new session" in down


def down_details(run: Run) -> list[tuple[str, str]]:
    return [(e.data["reason"], e.data["detail"]) for e in run.events
            if e.kind == DEVICE_HEALTH and e.data["status"] == "down"]


async def test_a_crashed_server_is_a_lost_connection_not_a_shutdown(
        sim_process: tuple[subprocess.Popen[str], dict[str, Any]], start: Any) -> None:
    """Issue 20: a killed server was reported as `the server ended the session: BadShutdown`,
    the status asyncua makes up itself for every subscription when the connection is lost."""
    process, info = sim_process
    run = start(device(info["endpoint"], [
        {"name": "power", "node": info["node"], "sampling_interval_s": 0.05}]))
    await wait_until_async(lambda: run.values("power"), timeout_s=10, what="first value")
    process.kill()
    await wait_until_async(lambda: down_details(run), timeout_s=10, what="the device down")
    reason, detail = down_details(run)[0]
    assert reason == "unreachable"
    assert "connection lost" in detail and "BadShutdown" not in detail


async def test_a_frozen_server_is_no_answer_not_a_shutdown(
        sim_process: tuple[subprocess.Popen[str], dict[str, Any]], start: Any) -> None:
    process, info = sim_process
    # As in the field: asyncua's liveness probe (every timeout_s, 2 s) notices before the
    # stall watchdog would (stall_after_s: 15 * 0.5 s).
    run = start(device(info["endpoint"], [
        {"name": "power", "node": info["node"], "sampling_interval_s": 0.05}],
        publishing_interval_s=0.5, keepalive_count=10))
    await wait_until_async(lambda: run.values("power"), timeout_s=10, what="first value")
    os.kill(process.pid, signal.SIGSTOP)
    await wait_until_async(lambda: down_details(run), timeout_s=15, what="the device down")
    reason, detail = down_details(run)[0]
    assert reason == "timeout", detail
    assert "no answer from the server within 2 s" in detail and "BadShutdown" not in detail
    os.kill(process.pid, signal.SIGCONT)
    count = len(run.values("power"))
    await wait_until_async(lambda: len(run.values("power")) > count + 3, timeout_s=20,
                           what="values once the server runs again")


async def test_a_server_that_announces_its_shutdown_is_reported_so(
        sim: OpcUaSimServer, start: Any) -> None:
    run = start(device(sim.endpoint, [
        {"name": "power", "node": sim.node_id("active_power_w"), "sampling_interval_s": 0.05}]))
    await wait_until_async(lambda: run.values("power"), timeout_s=10, what="first value")
    assert await sim.announce_shutdown() >= 1
    await wait_until_async(lambda: down_details(run), timeout_s=10, what="the device down")
    assert down_details(run)[0] == (
        "unreachable", "the server ended the session (BadShutdown): it is shutting down")


async def test_an_array_the_default_max_array_length_cuts_is_reported_not_cut_silently(
        start: Any) -> None:
    """Field trial (issue 20): 1,024-sample vibration captures arrived as 64 samples each
    (windows of n=704 per 11 captures), without a word."""
    machine = SCENARIOS["compressor"].factory(ScenarioOptions(seed=3))
    server = OpcUaSimServer("compressor", machine.trace_record, advance=machine.advance,
                            tick_s=0.2, arrays=machine.arrays)
    await server.start()
    try:
        with capture_logs() as logs:
            run = start(device(server.endpoint, [
                {"name": "wave", "node": server.node_id("vibration_waveform_mm_s"),
                 "sampling_interval_s": 0.2},
                # Set by the technician: meant, not reported.
                {"name": "history", "node": server.node_id("power_history_w"), "mode": "poll",
                 "max_array_length": 2},
            ]))
            await wait_until_async(lambda: len([b for b in run.batches if "wave" in b.tags]) >= 3
                                   and len(run.values("history")) >= 6, timeout_s=15,
                                   what="three captures and a few polls")
            health = run.health()
    finally:
        await server.stop()
    assert all(b.tags.count("wave") == 64 for b in run.batches if "wave" in b.tags)
    # Up when connected (before any value), then degraded: read, not wholly.
    assert health == [("up", ""), ("degraded", "array_truncated")]
    detail = next(e.data["detail"] for e in run.events if e.kind == DEVICE_HEALTH
                  and e.data["status"] == "degraded")
    assert detail.startswith("tag wave: arrays of 1024 values, the agent keeps the first 64 "
                             "(max_array_length's default): set max_array_length: 1024 on "
                             "the tag to keep them all")
    cut = [(e["log_level"], e["tag"]) for e in logs if e["event"] == "opcua_array_cut"]
    assert cut == [("warning", "wave"), ("info", "history")]  # once per tag


async def test_samples_of_a_subscribed_device_tell_bad_from_not_sampled_in_time_order(
        sim: OpcUaSimServer, start: Any) -> None:
    """Issue 20: a subscribed device's rows are the union of its tags' notification times, so
    nil meant both "bad" and "not sampled here", and dt_ms went negative."""
    tags = ["power", "temp", "state"]
    config = device(sim.endpoint, [
        {"name": "power", "node": sim.node_id("active_power_w"), "sampling_interval_s": 0.05},
        {"name": "temp", "node": sim.node_id("discharge_temp_c"), "sampling_interval_s": 0.2},
        {"name": "state", "node": sim.node_id("state"), "mode": "poll"},
    ])
    run = start(config, RawSamples(config.name, tags, window_s=1.0))
    await wait_until_async(lambda: run.values("temp"), timeout_s=10, what="first values")
    sim.set_bad("discharge_temp_c")
    try:
        await wait_until_async(lambda: any("bad" in e.data for e in run.events
                                           if e.kind == SAMPLES), timeout_s=10,
                               what="a samples event with a bad sample")
    finally:
        sim.set_bad("discharge_temp_c", None)
    samples = [e.data for e in run.events if e.kind == SAMPLES]
    unsampled = 0
    for data in samples:
        dt = data["dt_ms"]
        assert dt[0] == 0 and all(a <= b for a, b in itertools.pairwise(dt)), dt
        assert all(len(column) == len(dt) for column in data["tags"].values())
        for tag, rows in data.get("bad", {}).items():
            assert all(data["tags"][tag][row] is None for row in rows)
        for tag, column in data["tags"].items():
            bad = set(data.get("bad", {}).get(tag, []))
            unsampled += sum(v is None and row not in bad for row, v in enumerate(column))
    assert unsampled > 0  # the tags were not all sampled at every row: nil without "bad"
    with_bad = next(data for data in samples if "bad" in data)
    assert "temp" in with_bad["bad"] and "power" not in with_bad["bad"]
