"""The fleet side with real processes: plc-sim, Mosquitto, `edge-agent run`, `edge-fleet ingest`
(two of them sharing the subscription) and a PostgreSQL of the test's own.

Everything the agent sent is in the database exactly once, though the database goes away
while events flow (nothing may be acknowledged meanwhile), an ingest process holding
unacknowledged messages is killed (SIGKILL), and one is killed after its commit with its
acknowledgements held back (the broker sends them all again: counted, not stored);
`edge-fleet completeness` then finds no gap, and tells the agent's own losses from
those of the broker's path.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import SECRET as SECRET_FOR_TESTS
from support import AgentProcess, agent_config, agent_env, modbus_device, running_sim

from agent.testing import Mosquitto, TcpProxy, console_script, stop_process, wait_until
from agent.testing.postgres import Postgres, postgres_bin_dir

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    postgres_bin_dir() is None, reason="PostgreSQL's server is not installed")]


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    with Postgres() as pg:
        yield pg


def fleet_config(tmp_path: Path, broker: Mosquitto, pg: Postgres, client_id: str) -> Path:
    path = tmp_path / f"{client_id}.yaml"
    path.write_text(f"""
mqtt: {{host: 127.0.0.1, port: {broker.port}, tls: false, client_id: {client_id},
       username: e2e, password: "${{E2E_MQTT_PASSWORD}}"}}
database: {{dsn: "{pg.dsn}"}}
ingest: {{batch_max_events: 50, batch_max_s: 0.1}}
""")
    return path


class FleetProcess:
    def __init__(self, command: str, config: Path, log: Path, env: dict[str, str]) -> None:
        self.log = log
        with open(log, "a") as out:
            self.process = subprocess.Popen([console_script("edge-fleet"), command, "-c",
                                             str(config)], stderr=out, stdout=subprocess.DEVNULL,
                                            env=env, text=True)

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()
                if line.startswith("{")]

    def logged(self, event: str) -> bool:
        return any(line.get("event") == event for line in self.lines())


def wait_connected(*processes: FleetProcess) -> None:
    wait_until(lambda: all(p.logged("fleet_mqtt_connected") for p in processes),
               timeout_s=30, what="the ingest processes connected and subscribing")


def count(pg: Postgres, query: str) -> int:
    with psycopg.connect(pg.dsn) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def test_every_event_lands_once_through_a_killed_ingest(
    tmp_path: Path, numba_cache: Path, postgres: Postgres,
) -> None:
    env = agent_env(numba_cache)
    with Mosquitto(users={"e2e": SECRET_FOR_TESTS}) as broker, \
            running_sim(tmp_path, "sim") as sim:
        configs = [fleet_config(tmp_path, broker, postgres, f"ingest-{i}") for i in (1, 2)]
        first = FleetProcess("ingest", configs[0], tmp_path / "ingest-1.log", env)
        second = FleetProcess("ingest", configs[1], tmp_path / "ingest-2.log", env)
        try:
            wait_connected(first, second)
            config = agent_config(tmp_path, broker, modbus_device("compressor-1", sim.port),
                                  window_s=0.3)
            with AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:
                wait_until(lambda: count(postgres, "SELECT count(*) FROM events") >= 20,
                           timeout_s=60, what="events in the database")
                # The database goes away: events keep arriving, none may be acknowledged.
                postgres.stop("immediate")
                wait_until(lambda: all(p.logged("fleet_commit_failed") for p in (first, second)),
                           timeout_s=60, what="both processes failing to commit")
                first.process.send_signal(signal.SIGKILL)  # holding unacknowledged messages
                first.process.wait(timeout=10)
                postgres.start()
                first = FleetProcess("ingest", configs[0], tmp_path / "ingest-1.log", env)
                before = count(postgres, "SELECT count(*) FROM events")
                wait_until(lambda: count(postgres, "SELECT count(*) FROM events") >= before + 40,
                           timeout_s=60, what="events flowing again")
                wait_until(lambda: count(postgres, "SELECT count(*) FROM windows") >= 3 * 7,
                           timeout_s=60, what="windows as rows per tag")
                assert agent.terminate() == 0
            stats = subprocess.run([console_script("edge-agent"), "buffer", "stats", "-c",
                                    str(config), "--json"], capture_output=True, text=True,
                                   env=env, timeout=60, check=True)
            made = int(json.loads(stats.stdout)["last_seq"])
            wait_until(lambda: count(postgres, "SELECT count(*) FROM event_ids") >= made,
                       timeout_s=60, what=f"all {made} events in the database")
        finally:
            for process in (first, second):
                process.process.send_signal(signal.SIGTERM)
                stop_process(process.process)

    # Each event once, none missing, and the completeness report says so.
    assert count(postgres, "SELECT count(*) FROM events") == made
    assert count(postgres, "SELECT count(DISTINCT seq) FROM events") == made
    assert count(postgres, "SELECT count(*) FROM gateway_status") == 1
    report = subprocess.run([console_script("edge-fleet"), "completeness", "-c",
                             str(configs[1])], capture_output=True, text=True, env=env,
                            timeout=60, check=False)
    assert report.returncode == 0, report.stdout + report.stderr
    assert f"{made} events received, seqs 1..{made}" in report.stdout, report.stdout
    assert "complete: every event made was received" in report.stdout
    stopped = [line for p in (first, second) for line in p.lines()
               if line.get("event") == "fleet_ingest_stopped"]
    assert sum(int(line["stored"]) for line in stopped) <= made  # type: ignore[call-overload]


def publish_events(port: int, count_: int, gateway: str = "gw-x") -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.events import Event, encode

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set("e2e", SECRET_FOR_TESTS)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(f"lab/{gateway}/m/change", encode(
        Event("change", "m", 1_796_000_000 * 10**9 + seq, {"tags": {}}), gateway=gateway,
        seq=seq), qos=1) for seq in range(1, count_ + 1)]
    for info in infos:
        info.wait_for_publish(timeout=10)
    client.disconnect()
    client.loop_stop()


def test_a_retired_ingest_left_the_group_takes_no_share(
    tmp_path: Path, numba_cache: Path, postgres: Postgres,
) -> None:
    env = agent_env(numba_cache)
    with Mosquitto(users={"e2e": SECRET_FOR_TESTS}) as broker:
        configs = [fleet_config(tmp_path, broker, postgres, f"ingest-{i}") for i in (1, 2)]
        processes = [FleetProcess("ingest", c, tmp_path / f"{c.stem}.log", env) for c in configs]
        try:
            wait_connected(*processes)
            processes[1].process.send_signal(signal.SIGTERM)
            assert processes[1].process.wait(timeout=20) == 0
            left = subprocess.run([console_script("edge-fleet"), "leave", "-c", str(configs[1])],
                                  capture_output=True, text=True, env=env, timeout=30,
                                  check=False)
            assert left.returncode == 0, left.stderr
            publish_events(broker.port, 200)
            wait_until(lambda: count(postgres, "SELECT count(*) FROM events") >= 200,
                       timeout_s=30, what="all 200 events through the remaining process")
        finally:
            for process in processes:
                stop_process(process.process)


ALL_ALLOWED = "user e2e\ntopic readwrite #\nuser gw-e2e\ntopic readwrite #\n"
WINDOWS_DENIED = ("user e2e\ntopic readwrite #\n"
                  "user gw-e2e\ntopic deny lab/gw-e2e/m1/window\ntopic readwrite #\n")
"""An access rule that drops the agent's windows on the broker: over MQTT 3.1.1 the broker
acknowledges a denied PUBLISH all the same, so the agent deletes what nobody received."""


def buffer_stats(config: Path, env: dict[str, str]) -> dict[str, Any]:
    """`edge-agent buffer stats --json` (safe beside the running agent)."""
    result = subprocess.run([console_script("edge-agent"), "buffer", "stats", "-c", str(config),
                             "--json"], capture_output=True, text=True, env=env, timeout=60,
                            check=True)
    stats: dict[str, Any] = json.loads(result.stdout)
    return stats


def agent_last_seq(config: Path, env: dict[str, str]) -> int:
    """The highest seq the running agent handed out (`edge-agent status --json`)."""
    result = subprocess.run([console_script("edge-agent"), "status", "-c", str(config), "--json"],
                            capture_output=True, text=True, env=env, timeout=60, check=True)
    return int(json.loads(result.stdout)["store"]["last_seq"])


def max_seq(pg: Postgres) -> int:
    return count(pg, "SELECT coalesce(max(seq), 0) FROM event_ids")


def test_completeness_explains_the_agents_losses_and_not_the_brokers(
    tmp_path: Path, numba_cache: Path, postgres: Postgres,
) -> None:
    env = agent_env(numba_cache)
    acl = tmp_path / "acl"
    acl.write_text(ALL_ALLOWED)
    broker = Mosquitto(users={"e2e": SECRET_FOR_TESTS}, extra_config=f"acl_file {acl}\n")
    with broker, running_sim(tmp_path, "sim") as sim:
        fleet = fleet_config(tmp_path, broker, postgres, "ingest-1")
        ingest = FleetProcess("ingest", fleet, tmp_path / "ingest.log", env)
        try:
            wait_connected(ingest)
            # The broker refuses the agent's login at first: its store fills past its bound.
            config = agent_config(tmp_path, broker,
                                  modbus_device("m1", sim.port, poll_interval_s=0.05),
                                  window_s=0.05, max_bytes="64 KiB")
            config.write_text(config.read_text()
                              .replace("tls: {enabled: false},", 'tls: false, version: "3.1.1",')
                              .replace("username: e2e,", "username: gw-e2e,"))
            with AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:
                agent.wait_logged("store_degraded", timeout_s=60)
                broker.add_user("gw-e2e", SECRET_FOR_TESTS)
                wait_until(lambda: buffer_stats(config, env)["depth"] == 0, timeout_s=90,
                           what="the backlog sent (live events go in seq order from here)")
                wait_until(lambda: count(postgres, "SELECT count(*) FROM events WHERE "
                                         "kind = 'store_health' AND data ? 'merged_seqs'") > 0,
                           timeout_s=60, what="a store_health naming merged windows")
                # Windows lost on the broker's side for a while: nothing of the agent's says so.
                before_denial = max_seq(postgres)
                acl.write_text(WINDOWS_DENIED)
                broker.reload()
                denied_from = agent_last_seq(config, env)
                wait_until(lambda: agent_last_seq(config, env) > denied_from + 60, timeout_s=60,
                           what="the agent sending on while its windows are dropped")
                acl.write_text(ALL_ALLOWED)
                broker.reload()
                allowed = max_seq(postgres)
                wait_until(lambda: count(postgres, "SELECT count(*) FROM events WHERE kind = "
                                         f"'window' AND seq > {allowed}") > 10,
                           timeout_s=60, what="windows arriving again")
                # Delivered in seq order: every event the broker took before these is in.
                after_denial = max_seq(postgres)
                assert agent.terminate() == 0
            made = int(buffer_stats(config, env)["last_seq"])
            wait_until(lambda: max_seq(postgres) >= made, timeout_s=60,
                       what=f"the agent's last event, #{made}, in the database")
            with psycopg.connect(postgres.dsn) as conn:
                reports = conn.execute("SELECT seq, left(data::text, 400) FROM events "
                                       "WHERE kind = 'store_health' ORDER BY seq").fetchall()
        finally:
            ingest.process.send_signal(signal.SIGTERM)
            stop_process(ingest.process)

    result = subprocess.run([console_script("edge-fleet"), "completeness", "-c", str(fleet),
                             "--json"], capture_output=True, text=True, env=env, timeout=60,
                            check=False)
    assert result.returncode == 1, "an unexplained gap: " + result.stdout + result.stderr
    [report] = json.loads(result.stdout)
    assert report["store"] and len(report["store"]) == 16, report["store"]
    whys = {item["why"] for item in report["explained"]}
    assert "merged into other windows by the agent" in whys, whys
    unexplained = [seq for first, last in report["unexplained"] for seq in range(first, last + 1)]
    assert unexplained, "the windows the broker dropped are missing, and nothing explains them"
    assert all(before_denial < seq < after_denial for seq in unexplained), \
        ("only windows of the denial are unexplained", before_denial, after_denial,
         report["unexplained"], reports,
         [line for line in ingest.lines() if line.get("level") != "debug"])


class AckHoldingProxy(TcpProxy):
    """A TCP proxy between an ingest process and the broker that, once `hold` is set, stops
    passing what the ingest sends (its PUBACKs) while it still passes what the broker sends:
    the ingest commits and acknowledges, and the broker never hears of it."""

    def __init__(self, broker_port: int) -> None:
        self.hold = threading.Event()
        super().__init__(broker_port)

    def passes(self, index: int, from_client: bool, data: bytes) -> bool:
        return not (from_client and self.hold.is_set())


def test_an_ingest_killed_between_its_commit_and_its_acks_stores_nothing_twice(
    tmp_path: Path, numba_cache: Path, postgres: Postgres,
) -> None:
    env = agent_env(numba_cache)
    with Mosquitto(users={"e2e": SECRET_FOR_TESTS}) as broker:
        proxy = AckHoldingProxy(broker.port)
        config = fleet_config(tmp_path, broker, postgres, "ingest-1")
        config.write_text(config.read_text().replace(f"port: {broker.port}",
                                                     f"port: {proxy.port}"))
        ingest = FleetProcess("ingest", config, tmp_path / "ingest.log", env)
        try:
            wait_connected(ingest)
            proxy.hold.set()
            publish_events(broker.port, 300, gateway="gw-k")
            wait_until(lambda: count(postgres, "SELECT count(*) FROM events") == 300,
                       timeout_s=30, what="every event committed (its PUBACK held back)")
            ingest.process.send_signal(signal.SIGKILL)
            ingest.process.wait(timeout=10)
            proxy.close()
            # Back, straight to the broker: it sends the 300 again, as never acknowledged.
            config.write_text(config.read_text().replace(f"port: {proxy.port}",
                                                         f"port: {broker.port}"))
            ingest = FleetProcess("ingest", config, tmp_path / "ingest.log", env)
            wait_until(lambda: count(postgres, "SELECT coalesce(sum(count), 0) FROM duplicates")
                       == 300, timeout_s=30, what="the 300 again, counted as duplicates")
        finally:
            ingest.process.send_signal(signal.SIGTERM)
            stop_process(ingest.process)
    assert count(postgres, "SELECT count(*) FROM events") == 300, "stored once"
    assert count(postgres, "SELECT count(DISTINCT seq) FROM event_ids WHERE gateway = 'gw-k'") \
        == 300


def test_a_push_from_the_fleet_is_applied_and_its_outcome_read_back(
    tmp_path: Path, numba_cache: Path, postgres: Postgres,
) -> None:
    """The whole round trip with the real commands: `edge-fleet keys new`, `config push`, the
    agent applying it, its `config_applied` ingested, `config status` reading it back."""
    env = agent_env(numba_cache)
    fleet = [console_script("edge-fleet")]
    key = tmp_path / "fleet.key"
    subprocess.run([*fleet, "keys", "new", "--out", str(key)], check=True, env=env,
                   capture_output=True, timeout=60)
    with Mosquitto(users={"e2e": SECRET_FOR_TESTS}) as broker, \
            running_sim(tmp_path, "sim") as sim:
        settings = fleet_config(tmp_path, broker, postgres, "ingest")
        ingest = FleetProcess("ingest", settings, tmp_path / "ingest.log", env)
        try:
            wait_connected(ingest)
            config = agent_config(tmp_path, broker, modbus_device("compressor-1", sim.port))
            remote = f"remote: {{enabled: true, trusted_keys: [{key}.pub], confirm_s: 10}}\n"
            config.write_text(config.read_text() + remote)
            pushed = tmp_path / "pushed.yaml"
            pushed.write_text(config.read_text() + "health: {heartbeat_s: 30}\n")
            with AgentProcess(config, tmp_path / "agent.log", numba_cache):
                wait_until(lambda: count(postgres, "SELECT count(*) FROM heartbeats") >= 1,
                           timeout_s=60, what="a heartbeat in the database (the site)")
                push = subprocess.run([*fleet, "config", "push", "gw-e2e", str(pushed),
                                       "--key", str(key), "-c", str(settings)],
                                      check=False, capture_output=True, text=True, env=env,
                                      timeout=60)
                assert push.returncode == 0, push.stdout + push.stderr

                def applied() -> dict[str, Any] | None:
                    status = subprocess.run([*fleet, "config", "status", "gw-e2e", "--json",
                                             "-c", str(settings)], capture_output=True,
                                            text=True, env=env, timeout=60, check=True)
                    [row] = json.loads(status.stdout)
                    return row if row["applied_version"] == 1 else None

                row = wait_until(applied, timeout_s=60, what="version 1 applied, in status")
                assert config.read_text() == pushed.read_text()
        finally:
            ingest.process.send_signal(signal.SIGTERM)
            stop_process(ingest.process)
    assert row["applied_sha256"] == hashlib.sha256(pushed.read_bytes()).hexdigest()
    assert row["pushed_version"] == 1 and row["last"]["what"] == "applied", row
