"""Remote configuration from the fleet side against a real Mosquitto and a real PostgreSQL:
what `edge-fleet config push` and `edge-fleet command` publish is what a gateway opens, a
push is recorded once the broker has it (and only then), and `edge-fleet config status`
follows the gateway's answers as the ingest stores them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog

from agent.config.signed import load_public_keys, open_signed
from agent.events import Event, encode
from agent.testing import Mosquitto, MqttCollector
from agent.testing.postgres import Postgres, postgres_bin_dir
from fleet.cli import main
from fleet.config_history import Push, last_change, record_push
from fleet.database import FleetDatabase, Received
from fleet.remote import write_key_pair

pytestmark = pytest.mark.skipif(postgres_bin_dir() is None,
                                reason="PostgreSQL's server is not installed")
S = 1_000_000_000
GATEWAY_FILE = """\
gateway: {id: gw-1, site: plant}
mqtt: {host: broker.example, tls: false}
remote: {enabled: true, trusted_keys: [/etc/edge-agent/fleet.key.pub]}
devices:
  - name: press
    protocol: modbus-tcp
    host: 10.0.0.5
    tags:
      - {name: power_w, address: 30001, type: float32}
"""


@pytest.fixture(autouse=True)
def _logging_reset() -> Iterator[None]:
    """`main` points structlog at this test's captured stderr: put it back for the next."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "fleet.key"
    write_key_pair(path)
    return path


def fleet_yaml(tmp_path: Path, server: Postgres, broker_port: int) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(f"mqtt: {{host: 127.0.0.1, port: {broker_port}, tls: false}}\n"
                    f"database: {{dsn: '{server.dsn}'}}\n")
    return path


def gateway_event(kind: str, seq: int, data: dict[str, Any], at_ns: int,
                  gateway: str = "gw-1") -> Received:
    """As the agent sends it, on its topic under site `plant`."""
    return Received(f"plant/{gateway}/_gateway/{kind}",
                    encode(Event(kind, "_gateway", at_ns, data), gateway=gateway, seq=seq))


def heartbeat(seq: int, at_ns: int, sha256: str = "ab" * 32) -> Received:
    return gateway_event("heartbeat", seq, {"reason": "periodic", "uptime_s": 1.0,
                                            "version": "0.1.0", "config_sha256": sha256,
                                            "devices": {}, "store": {"depth": 0}}, at_ns)


def pushed(db: FleetDatabase) -> list[tuple[Any, ...]]:
    return db.conn.execute("SELECT version, sha256, yaml, key_id, expires_at - pushed_at "
                           "FROM config_pushes ORDER BY version").fetchall()


def test_a_push_reaches_the_gateways_topic_signed_and_is_recorded(
        db: FleetDatabase, server: Postgres, mosquitto: Mosquitto, key: Path,
        tmp_path: Path) -> None:
    now = time.time_ns()
    # The gateway's events came under site `plant`; it reports version 3 applied (pushed
    # from another fleet host): the next is 4.
    db.store([heartbeat(1, now - 60 * S),
              gateway_event("config_applied", 2, {"version": 3, "sha256": "cd" * 32,
                                                  "previous_sha256": "ab" * 32, "key": "k"},
                            now - 30 * S)])
    file = tmp_path / "gw-1.yaml"
    file.write_text(GATEWAY_FILE)
    fleet = fleet_yaml(tmp_path, server, mosquitto.port)
    with MqttCollector(mosquitto.host, mosquitto.port, "+/gw-1/_command",
                       record=lambda m: (m.topic, bytes(m.payload), m.retain, m.qos)) as gateway:
        assert main(["config", "push", "gw-1", str(file), "--key", str(key), "-c",
                     str(fleet)]) == 0
        [(topic, payload, retained, qos)] = gateway.wait_for(
            lambda got: len(got) >= 1, timeout_s=10, what="the signed configuration")
        assert main(["config", "push", "gw-1", str(file), "--key", str(key), "-c",
                     str(fleet), "--expires-in", "600"]) == 0
        second = gateway.wait_for(lambda got: len(got) >= 2, timeout_s=10, what="the second")
    assert (topic, retained, qos) == ("plant/gw-1/_command", False, 1)
    trusted = load_public_keys([key.with_name("fleet.key.pub")])
    signed = open_signed(payload, trusted, "gw-1", time.time_ns())
    assert (signed.type, signed.version, signed.config) == ("config", 4, GATEWAY_FILE)
    assert open_signed(second[1][1], trusted, "gw-1", time.time_ns()).version == 5
    sha = hashlib.sha256(GATEWAY_FILE.encode()).hexdigest()
    kid = next(iter(trusted))
    rows = pushed(db)
    assert [row[:4] for row in rows] == [(4, sha, GATEWAY_FILE, kid), (5, sha, GATEWAY_FILE, kid)]
    for (_, _, _, _, valid), wanted in zip(rows, (7 * 86400, 600), strict=True):
        assert abs(valid.total_seconds() - wanted) < 5, "expires_at: the message's expiry"


def test_a_push_the_broker_never_acknowledged_is_not_recorded(
        db: FleetDatabase, server: Postgres, mosquitto: Mosquitto, key: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "gw-1.yaml"
    file.write_text(GATEWAY_FILE)
    fleet = fleet_yaml(tmp_path, server, mosquitto.port)
    mosquitto.stop()
    assert main(["config", "push", "gw-1", str(file), "--key", str(key), "--site", "plant",
                 "-c", str(fleet)]) == 1
    assert "not sent: cannot connect to the broker" in capsys.readouterr().err
    assert pushed(db) == []
    # And without a site, none known: it says to give one, before any broker is tried.
    assert main(["config", "push", "gw-1", str(file), "--key", str(key), "-c", str(fleet)]) == 2
    assert "no site known for gw-1" in capsys.readouterr().err


def test_a_command_reaches_the_gateway_signed(db: FleetDatabase, server: Postgres,
                                              mosquitto: Mosquitto, key: Path,
                                              tmp_path: Path) -> None:
    db.store([heartbeat(1, time.time_ns())])
    fleet = fleet_yaml(tmp_path, server, mosquitto.port)
    before = time.time_ns()
    with MqttCollector(mosquitto.host, mosquitto.port, "plant/gw-1/_command",
                       record=lambda m: bytes(m.payload)) as gateway:
        assert main(["command", "gw-1", "relearn", "press-1", "--key", str(key), "-c",
                     str(fleet)]) == 0
        [payload] = gateway.wait_for(lambda got: len(got) >= 1, timeout_s=10, what="command")
    signed = open_signed(payload, load_public_keys([key.with_name("fleet.key.pub")]), "gw-1",
                         time.time_ns())
    assert (signed.type, signed.command) == ("command", ("relearn", "press-1"))
    assert before <= signed.version == signed.issued_ns <= time.time_ns()


def test_config_status_follows_the_gateways_answers(
        db: FleetDatabase, server: Postgres, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    one, two = GATEWAY_FILE, GATEWAY_FILE.replace("10.0.0.5", "10.0.0.6")
    sha1, sha2 = (hashlib.sha256(t.encode()).hexdigest() for t in (one, two))
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
    with db.conn.transaction():
        for version, text, sha in ((1, one, sha1), (2, two, sha2)):
            record_push(db.conn, Push("gw-1", version, sha, text, "k1", expires))
    t = time.time_ns()
    fleet = fleet_yaml(tmp_path, server, 9)

    def status() -> dict[str, Any]:
        capsys.readouterr()
        assert main(["config", "status", "gw-1", "--json", "-c", str(fleet)]) == 0
        [only] = json.loads(capsys.readouterr().out)
        return dict(only)

    db.store([gateway_event("config_applied", 1, {
                  "version": 1, "sha256": sha1, "previous_sha256": "00" * 32, "key": "k1",
                  "kept": [], "started": ["press"], "stopped": [], "mqtt_restarted": False},
                  t + 1 * S),
              gateway_event("config_applied", 2, {
                  "version": 2, "sha256": sha2, "previous_sha256": sha1, "key": "k1",
                  "kept": [], "started": ["press"], "stopped": ["press"],
                  "mqtt_restarted": False}, t + 2 * S),
              gateway_event("config_rejected", 3, {
                  "type": "config", "version": 3, "reason": "invalid_config",
                  "detail": "2 problems", "refused_total": 1,
                  "problems": ["config.yaml:9: devices[0].tags[0].type: 'flaot32' is not ..."]},
                  t + 3 * S),
              # A refused command is not about the configuration.
              gateway_event("config_rejected", 4, {
                  "type": "command", "version": t, "reason": "unknown_command",
                  "detail": "reboot", "refused_total": 2, "problems": []}, t + 4 * S)])
    got = status()
    assert (got["pushed_version"], got["applied_version"], got["applied_sha256"]) == (2, 2, sha2)
    last = got["last"]
    assert (last["what"], last["version"], last["reason"]) == ("rejected", 3, "invalid_config")
    assert last["problems"] == ["config.yaml:9: devices[0].tags[0].type: 'flaot32' is not ..."]

    with psycopg.connect(server.dsn) as conn:  # not the ingest's: it commits its batches
        change = last_change(conn, "gw-1")
    assert change is not None and (change.version, change.previous_version) == (2, 1)
    assert "-    host: 10.0.0.5" in change.diff and "+    host: 10.0.0.6" in change.diff

    # Version 4 applied, then given up: the gateway runs version 2's file again.
    db.store([gateway_event("config_applied", 5, {
                  "version": 4, "sha256": "dd" * 32, "previous_sha256": sha2, "key": "k1",
                  "kept": ["press"], "started": [], "stopped": [], "mqtt_restarted": True},
                  t + 5 * S),
              gateway_event("config_rolled_back", 6, {
                  "version": 4, "sha256": "dd" * 32, "restored_sha256": sha2,
                  "reason": "device press did not come back within 60 s",
                  "devices_down": ["press"]}, t + 6 * S),
              heartbeat(7, t + 7 * S, sha256=sha2)])
    got = status()
    assert (got["applied_version"], got["applied_sha256"], got["running_sha256"]) == (2, sha2,
                                                                                      sha2)
    assert (got["last"]["what"], got["last"]["version"]) == ("rolled back", 4)
    assert got["last"]["detail"] == "devices down: press"
    capsys.readouterr()
    assert main(["config", "status", "-c", str(fleet)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["gateway", "pushed", "applied", "sha256", "running", "last",
                                "reason", "at"]
    assert table[1].split()[:8] == ["gw-1", "2", "2", sha2[:12], "same", "rolled", "back", "4"]
    assert "device press did not come back within 60 s" in table[1]
