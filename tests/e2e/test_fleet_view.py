"""The fleet view in a real browser: `edge-fleet serve` as a process over a PostgreSQL of the
test's own, filled by the ingest's own code with events as the agent encodes them, driven
by headless Chromium (Selenium and Debian's chromedriver)."""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent.events import Event, encode
from agent.testing import console_script, free_tcp_port, port_open, stop_process, wait_until
from agent.testing.postgres import Postgres, postgres_bin_dir
from agent.uplink.presence import Presence, encode_presence
from fleet.auth import hash_password
from fleet.config_history import Push, record_push
from fleet.database import FleetDatabase, Received

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(postgres_bin_dir() is None, reason="PostgreSQL's server is not installed"),
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="Debian's chromium and chromium-driver are not installed"),
]
PASSWORD = "correct horse battery"
ARTEFACTS = Path(__file__).resolve().parents[2] / ".artefacts" / "fleet-view"
"""Screenshots of every page, kept after the run (for a reviewer; not in git)."""
S = 1_000_000_000


def seeded(pg: Postgres) -> None:
    """An hour of one gateway: a compressor cycling, its energy, a tag, an anomaly, a limit,
    a meter that went down, and three configurations pushed (two applied, one refused)."""
    now = time.time_ns()
    t0 = now - 3600 * S
    seq = iter(range(1, 10_000))
    out: list[Received] = []

    def add(kind: str, device: str, at: int, data: dict[str, Any]) -> None:
        out.append(Received(f"plant/gw-1/{device}/{kind}",
                            encode(Event(kind, device, at, data), gateway="gw-1", seq=next(seq))))

    add("heartbeat", "_gateway", t0, {
        "reason": "start", "uptime_s": 0.0, "version": "0.1.0", "config_sha256": "ab" * 32,
        "devices": {"compressor-1": {"status": "up", "reason": ""},
                    "meter": {"status": "up", "reason": ""}},
        "store": {"id": "store-a", "depth": 3, "last_seq": 1}})
    for i, state in enumerate(["running", "idle", "running", "idle", "off", "running"]):
        add("state", "compressor-1", t0 + i * 600 * S,
            {"machine": "compressor", "from": None if i == 0 else "x", "to": state})
    for k in range(60):
        add("window", "compressor-1", t0 + k * 60 * S, {"start_ns": t0, "end_ns": t0, "tags": {
            "discharge_temp_c": {"n": 30, "bad": 0, "unit": "°C", "min": 70.0 + k / 10,
                                 "max": 75.0 + k / 10, "mean": 72.5 + k / 10, "std": 1.0,
                                 "last": 73.0}}})
    for k in range(4):
        add("energy", "compressor-1", t0 + (k + 1) * 900 * S, {
            "machine": "compressor", "period": "interval", "start_ns": t0, "end_ns": t0,
            "complete": True, "kwh": {"off": 0.0, "idle": 0.5, "running": 1.5, "overload": 0.0},
            "idle_kwh": 0.5, "total_kwh": 2.0,
            "hours": {"off": 0.05, "idle": 0.05, "running": 0.15, "overload": 0.0},
            "operating_h": 0.2, "starts": 1, "peak_demand_w": 7400.0 + k})
    for phase, at in (("start", t0 + 1200 * S), ("end", t0 + 1300 * S)):
        add("anomaly", "compressor-1", at, {
            "phase": phase, "episode": "e" * 32, "rule": "temp-unusual", "detector": "zscore",
            "threshold": 5.0, "score": 7.5, "peak_value": 81.0, "start_ns": t0 + 1200 * S,
            "peak_ns": t0 + 1250 * S, "end_ns": t0 + 1300 * S, "duration_s": 100.0,
            "tags": {"discharge_temp_c": {"before": [72.0, 73.0], "after": [74.0]}}})
    add("limit", "compressor-1", t0 + 1400 * S, {
        "phase": "start", "episode": "f" * 32, "rule": "overheating", "detector": "limits",
        "threshold": 85.0, "bound": "high", "limit": 85.0, "max_excess": 2.0,
        "peak_value": 87.0, "start_ns": t0 + 1400 * S, "peak_ns": t0 + 1400 * S,
        "tags": {"discharge_temp_c": {"before": [84.0]}}})
    add("device_health", "meter", t0 + 1800 * S, {"status": "down", "reason": "timeout",
                                                   "detail": "no answer within 1.0 s"})
    out.append(Received("plant/gw-1/_gateway/status", encode_presence(
        Presence("gw-1", "online", "0.1.0", "ab" * 32, t0))))
    out += silent_gateway(t0)
    pushes = configurations(t0, add)
    db = FleetDatabase.connect(pg.dsn)
    try:
        db.store(out)
        with db.conn.transaction():
            for push, at in pushes:
                record_push(db.conn, push)
                db.conn.execute("UPDATE config_pushes SET pushed_at = %s WHERE version = %s",
                                (at, push.version))
        # Its last message arrived two hours ago, though its status still says online.
        db.conn.execute("UPDATE event_ids SET received_at = now() - interval '2 hours' "
                        "WHERE gateway = 'gw-2'")
        db.conn.commit()
    finally:
        db.close()


CONFIG_V1 = """\
gateway: {id: gw-1, site: plant}
mqtt: {host: broker.example}
remote: {enabled: true, trusted_keys: [/etc/edge-agent/fleet.key.pub]}
devices:
  - {name: meter, protocol: modbus-tcp, host: 10.0.0.5, tags: [{name: power_w, address: 30001}]}
"""
CONFIG_V2 = CONFIG_V1.replace("10.0.0.5", "10.0.0.6").replace(
    "devices:", "# the new meter <b>not bold</b> & \"quoted\"\ndevices:")


def configurations(t0: int, add: Any) -> list[tuple[Push, dt.datetime]]:
    """Versions 1 and 2 pushed and applied, version 3 refused as invalid (the gateway's
    events through `add`); the pushes with the time each was made."""
    texts = {1: CONFIG_V1, 2: CONFIG_V2, 3: CONFIG_V2 + "bogus: 1\n"}
    sha = {v: hashlib.sha256(t.encode()).hexdigest() for v, t in texts.items()}
    add("config_applied", "_gateway", t0 + 100 * S, {
        "version": 1, "sha256": sha[1], "previous_sha256": "00" * 32, "key": "k1",
        "kept": [], "started": ["meter"], "stopped": [], "mqtt_restarted": False})
    add("config_applied", "_gateway", t0 + 200 * S, {
        "version": 2, "sha256": sha[2], "previous_sha256": sha[1], "key": "k1",
        "kept": ["compressor-1"], "started": ["meter"], "stopped": ["meter"],
        "mqtt_restarted": False})
    add("config_rejected", "_gateway", t0 + 300 * S, {
        "type": "config", "version": 3, "reason": "invalid_config", "detail": "1 problem",
        "refused_total": 1, "problems": ["config.yaml:7: bogus: unknown key 'bogus'"]})
    expires = dt.datetime.fromtimestamp(t0 / 1e9 + 8 * 86400, dt.UTC)
    return [(Push("gw-1", v, sha[v], texts[v], "k1", expires),
             dt.datetime.fromtimestamp(t0 / 1e9 + 100 * v - 10, dt.UTC)) for v in texts]


def silent_gateway(t0: int) -> list[Received]:
    """gw-2: online by its retained status, two heartbeats a minute apart, seq 3 dropped by
    its store (and said so) and seq 4 lost on the way."""
    def event(seq: int, kind: str, at: int, data: dict[str, Any]) -> Received:
        return Received(f"plant/gw-2/_gateway/{kind}", encode(
            Event(kind, "_gateway", at, data), gateway="gw-2", seq=seq, store="00000000000000b2"))
    beat = {"reason": "periodic", "uptime_s": 1.0, "version": "0.1.0",
            "config_sha256": "cd" * 32, "devices": {}, "store": {"depth": 0}}
    return [event(1, "heartbeat", t0, beat), event(2, "heartbeat", t0 + 60 * S, beat),
            event(5, "store_health", t0 + 61 * S, {"dropped": {"window": 1},
                                                    "dropped_seqs": {"window": [[3, 3]]}}),
            event(6, "heartbeat", t0 + 120 * S, beat),
            Received("plant/gw-2/_gateway/status", encode_presence(
                Presence("gw-2", "online", "0.1.0", "cd" * 32, t0)))]


@pytest.fixture
def pg() -> Iterator[Postgres]:
    with Postgres() as pg:
        seeded(pg)
        yield pg


@pytest.fixture
def server(pg: Postgres, tmp_path: Path) -> Iterator[str]:
    port = free_tcp_port()
    config = tmp_path / "fleet.yaml"
    config.write_text(f"""
mqtt: {{host: 127.0.0.1, tls: false}}
database: {{dsn: "{pg.dsn}"}}
serve:
  port: {port}
  session_secret: "{'s' * 40}"
  users: {{tech: "{hash_password(PASSWORD)}"}}
""")
    with open(tmp_path / "serve.log", "w") as log:
        process = subprocess.Popen([console_script("edge-fleet"), "serve", "-c", str(config)],
                                   stderr=log, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_open("127.0.0.1", port) or process.poll() is not None,
                   timeout_s=30, what="edge-fleet serve listening")
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(30)
    # A click that submits a form returns before the next page is there: finding an element
    # waits for it (up to 10 s) instead of failing at once.
    driver.implicitly_wait(10)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_fleet_view_behind_its_login(server: str, pg: Postgres, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(1280, 1400)

    def shot(name: str) -> None:
        path = ARTEFACTS / f"{name}.png"
        browser.save_screenshot(str(path))
        assert path.stat().st_size > 5_000, f"{name}: an empty page"

    def login(password: str) -> None:
        browser.find_element(By.ID, "user").send_keys("tech")
        browser.find_element(By.ID, "password").send_keys(password)
        browser.find_element(By.ID, "submit").click()

    browser.get(server + "/gateway/gw-1")
    assert browser.current_url.endswith("/login"), "every page needs a login"
    login("wrong password")
    assert "wrong name or password" in browser.find_element(By.ID, "error").text
    shot("login")
    login(PASSWORD)
    shot("fleet")

    fleet = browser.find_element(By.ID, "gateways").text
    assert "gw-1" in fleet and "online" in fleet and "0.1.0" in fleet and "abababababab" in fleet
    rows = {r.find_element(By.TAG_NAME, "a").text: r.find_element(By.CLASS_NAME, "status").text
            for r in browser.find_elements(By.CSS_SELECTOR, "#gateways tr.gateway")}
    assert rows == {"gw-1": "online", "gw-2": "silent"}, "nothing heard from gw-2 for 2 hours"
    browser.find_element(By.LINK_TEXT, "gw-1").click()

    devices = browser.find_element(By.ID, "devices").text
    assert "meter down timeout: no answer within 1.0 s" in devices, devices
    assert "compressor-1 up" in devices and "compressor" in devices
    assert "complete" in browser.find_element(By.ID, "completeness").text
    configuration_shown_as_stored(browser, pg.dsn)
    shot("gateway")
    browser.find_element(By.LINK_TEXT, "compressor-1").click()

    states = {r.get_attribute("data-state")
              for r in browser.find_elements(By.CSS_SELECTOR, "#timeline rect")}
    assert states == {"running", "idle", "off"}, states
    energy = browser.find_element(By.ID, "energy").text
    assert "8.000" in energy and "25 %" in energy and "7403" in energy, energy  # 4 x 2 kWh
    assert browser.find_elements(By.CSS_SELECTOR, "#plot svg polyline.mean")
    episodes = browser.find_element(By.ID, "episodes").text
    assert "temp-unusual" in episodes and "overheating" in episodes and "running" in episodes
    assert "discharge_temp_c: 72, 73 | after: 74" in episodes, "the context's samples shown"
    shot("device")
    device_url = browser.current_url.split("?")[0]
    browser.get(device_url + "?from=2020-01-01T00:00&to=2020-01-01T06:00")  # a span of one's own
    assert browser.find_element(By.ID, "span-text").text == \
        "2020-01-01 00:00 to 2020-01-01 06:00 UTC"
    assert "no machine states in the span" in browser.find_element(By.TAG_NAME, "main").text
    assert browser.find_element(By.ID, "from").get_attribute("value") == "2020-01-01T00:00"
    browser.get(device_url + "?from=2020-01-02T00:00&to=2020-01-01T00:00")
    assert "must be before" in browser.find_element(By.ID, "span-error").text
    assert {r.get_attribute("data-state") for r in browser.find_elements(
        By.CSS_SELECTOR, "#timeline rect")} == states, "the preset span instead"

    browser.find_element(By.LINK_TEXT, "Completeness").click()
    assert "complete: every event made was received" in browser.find_element(
        By.ID, "report-gw-1").text
    gap = browser.find_element(By.ID, "report-gw-2").text
    assert "missing 3: dropped by the agent (window)" in gap, gap
    assert "missing 4: unexplained" in gap and "1 unexplained gap" in gap, gap
    shot("completeness")


def configuration_shown_as_stored(browser: Any, dsn: str) -> None:
    """The gateway page's configuration: the version applied, the history newest first with
    its reasons, and the diff of the last change, each as the database holds it."""
    from selenium.webdriver.common.by import By

    with psycopg.connect(dsn) as conn:
        [(version, sha, previous)] = conn.execute(
            "SELECT (data->>'version')::int, data->>'sha256', data->>'previous_sha256' "
            "FROM events WHERE gateway = 'gw-1' AND kind = 'config_applied' "
            "ORDER BY time DESC LIMIT 1").fetchall()
        texts = dict(conn.execute("SELECT sha256, yaml FROM config_pushes "
                                  "WHERE gateway = 'gw-1'").fetchall())
        history = conn.execute(
            "SELECT what, version FROM (SELECT pushed_at AS at, 'pushed' AS what, version "
            "FROM config_pushes WHERE gateway = 'gw-1' UNION ALL SELECT time, "
            "replace(kind, 'config_', ''), (data->>'version')::int FROM events "
            "WHERE gateway = 'gw-1' AND kind LIKE 'config%') h ORDER BY at DESC").fetchall()
    shown = browser.find_element(By.ID, "config-version").text
    assert f"version {version}" in shown and sha[:12] in shown, shown
    rows = browser.find_elements(By.CSS_SELECTOR, "#config-history tbody tr")
    assert [(r.find_element(By.CLASS_NAME, "what").text,
             int(r.find_elements(By.TAG_NAME, "td")[2].text)) for r in rows] == history
    assert "invalid_config" in rows[0].text and "config.yaml:7: bogus" in rows[0].text
    diff = browser.find_element(By.ID, "config-diff").text.splitlines()
    expected = [line.rstrip("\n") for line in difflib.unified_diff(
        texts[previous].splitlines(keepends=True), texts[sha].splitlines(keepends=True))]
    assert diff[2:] == expected[2:], "the hunks as difflib makes them (names aside)"
    assert "+# the new meter <b>not bold</b> & \"quoted\"" in diff, "shown as text"
    markup = browser.find_element(By.ID, "config-diff").get_attribute("innerHTML")
    assert "&lt;b&gt;not bold&lt;/b&gt;" in markup and "<b>" not in markup, "never as markup"
    assert browser.find_elements(By.CSS_SELECTOR, "#config-diff span.add")
