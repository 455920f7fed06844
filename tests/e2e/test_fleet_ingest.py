"""The fleet side with real processes: plc-sim, Mosquitto, `edge-agent run`, `edge-fleet ingest`
(two of them sharing the subscription) and a PostgreSQL of the test's own.

Everything the agent sent is in the database exactly once, though the database goes away
while events flow (nothing may be acknowledged meanwhile) and an ingest process holding
unacknowledged messages is killed (SIGKILL); `edge-fleet completeness` then finds no gap.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support import SECRET as SECRET_FOR_TESTS
from support import AgentProcess, agent_config, agent_env, modbus_device, running_sim

from agent.testing import Mosquitto, console_script, stop_process, wait_until
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
            wait_until(lambda: all(any(line.get("event") == "fleet_mqtt_connected"
                                       for line in p.lines()) for p in (first, second)),
                       timeout_s=30, what="both ingest processes subscribed")
            config = agent_config(tmp_path, broker, modbus_device("compressor-1", sim.port),
                                  window_s=0.3)
            with AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:
                wait_until(lambda: count(postgres, "SELECT count(*) FROM events") >= 20,
                           timeout_s=60, what="events in the database")
                # The database goes away: events keep arriving, none may be acknowledged.
                postgres.stop("immediate")
                wait_until(lambda: all(any(line.get("event") == "fleet_commit_failed"
                                           for line in p.lines()) for p in (first, second)),
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
            wait_until(lambda: all(any(line.get("event") == "fleet_mqtt_connected"
                                       for line in p.lines()) for p in processes),
                       timeout_s=30, what="both ingest processes subscribed")
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
