"""The .deb under a real systemd: a Debian 12 booted by systemd-nspawn, the package installed
with dpkg as on a gateway, the real agent reading a plc-sim and sending to a Mosquitto that
run on this machine (the container shares its network namespace).

What tests/e2e/test_packaging.py cannot show without systemd as PID 1: the postinst enabling
and starting a provisioned gateway, `Type=notify` (start and reload return once the agent
said READY=1), the watchdog restarting a frozen agent, `LoadCredential=` handing over the
MQTT password without it reaching the journal, `DynamicUser=` and the sandbox
(`SystemCallFilter=`) letting the agent run on its ahead-of-time kernels, and an upgrade
and a removal keeping /var/lib/edge-agent. The tests run in order on one container.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from debian_roots import (
    SYSTEMD_PACKAGES,
    Container,
    Refused,
    cached_root,
    extract,
    host_arch,
    require_tools,
    run,
)
from support import Sim, demo_tags, running_sim

from agent.events import Envelope
from agent.testing import Mosquitto, MqttCollector, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.container, pytest.mark.timeout(900)]

UNIT = "edge-agent.service"
CONFIG = "/etc/edge-agent/config.yaml"
USER = "gw-container"
PASSWORD = "cred-" + secrets.token_hex(12)
"""Random per run, so that finding it anywhere can only mean it leaked from here."""
DYNAMIC_UIDS = range(61184, 65520)
"""Where systemd allocates DynamicUser= ids (systemd.exec(5))."""


@dataclass
class Gateway:
    container: Container
    broker: Mosquitto
    sim: Sim
    installed: str
    """What dpkg printed for the first installation."""

    def config(self, window_s: float = 1.0) -> str:
        return f"""gateway: {{id: gw-container, site: lab, state_dir: /var/lib/edge-agent, clock: rtc}}
mqtt: {{host: 127.0.0.1, port: {self.broker.port}, tls: {{enabled: false}},
       username: {USER}, password_credential: mqtt-password}}
store: {{commit_interval_s: 0.1}}
aggregate: {{window_s: {window_s}}}
devices:
  - name: compressor
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {self.sim.port}
    timeout_s: 0.5
    poll_interval_s: 0.2
{demo_tags()}"""

    def write_config(self, text: str) -> str:
        """config.yaml in the container; the first 12 hex digits of its sha256, which the
        agent names in its status once it runs it."""
        self.container.write(CONFIG, text)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def main_pid(self) -> int:
        return int(self.container.show(UNIT, "MainPID"))

    def journal(self) -> str:
        return self.container.journal("-u", UNIT, "-o", "cat")[-6000:]

    def collector(self) -> MqttCollector[tuple[str, Envelope]]:
        return MqttCollector(self.broker.host, self.broker.port, "lab/gw-container/#",
                             username=USER, password=PASSWORD)


@pytest.fixture(scope="module")
def container_root() -> Path:
    try:
        require_tools("debootstrap", "systemd-nspawn", "nsenter", make_target="container-tools")
        return cached_root("systemd", host_arch(), SYSTEMD_PACKAGES)
    except Refused as exc:
        pytest.skip(f"no systemd container on this machine: {exc}")


@pytest.fixture(scope="module")
def gateway(
    container_root: Path, built_deb: Path, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """The container booted, the gateway provisioned (configuration and the password in
    /etc/credstore) and then the package installed: its postinst enables and starts it."""
    base = tmp_path_factory.mktemp("systemd-container")
    root = extract(container_root, base)
    try:
        with Mosquitto(users={USER: PASSWORD}) as broker, running_sim(base, "sim", "--seed", "3") as sim, \
                Container(root, f"edge-agent-test-{secrets.token_hex(3)}", base) as container:
            try:
                container.boot()
            except Refused as exc:
                pytest.skip(str(exc))
            gateway = Gateway(container, broker, sim, installed="")
            gateway.write_config(gateway.config())
            container.write("/etc/credstore/mqtt-password", PASSWORD, mode=0o600)
            shutil.copy(built_deb, root / "root" / built_deb.name)
            # /root, not /tmp: the container's /tmp is a tmpfs of its own.
            gateway.installed = container.run("dpkg", "-i", f"/root/{built_deb.name}",
                                              timeout_s=300).stdout
            yield gateway
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_postinst_enables_and_starts_a_provisioned_gateway(gateway: Gateway) -> None:
    container = gateway.container
    assert "not started" not in gateway.installed, gateway.installed
    assert container.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
    assert container.show(UNIT, "ActiveState") == "active", gateway.journal()
    # The broker refuses anonymous clients: data arriving means the credential was used.
    with gateway.collector() as cloud:
        cloud.wait_for(lambda got: any(e.device == "compressor" for _, e in got),
                       timeout_s=30, what="an event of the compressor")


def test_start_returns_once_the_agent_said_ready(gateway: Gateway) -> None:
    container = gateway.container
    sha = gateway.write_config(gateway.config())
    container.systemctl("stop", UNIT)
    assert container.show(UNIT, "ActiveState") == "inactive"
    container.systemctl("start", UNIT)
    # At once, without waiting: the status is the one the agent sends with READY=1 (a
    # Type=simple unit would be "active" with no status yet).
    assert container.show(UNIT, "ActiveState") == "active"
    assert container.show(UNIT, "StatusText") == f"running: 1 devices, config {sha}", \
        gateway.journal()


def test_reload_returns_once_the_change_is_applied(gateway: Gateway) -> None:
    container = gateway.container
    pid = gateway.main_pid()
    sha = gateway.write_config(gateway.config(window_s=2.0))
    assert sha not in container.show(UNIT, "StatusText")
    # The agent frozen while it is asked to reload: `systemctl reload` must wait for it,
    # not return once the signal is sent (ExecReload=/bin/kill alone would).
    container.run("kill", "-STOP", str(pid))
    reload = subprocess.Popen(container.enter("systemctl", "reload", UNIT),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            reload.wait(timeout=1.5)
    finally:
        container.run("kill", "-CONT", str(pid))
    assert reload.wait(timeout=60) == 0, reload.communicate()[0]
    assert container.show(UNIT, "StatusText") == f"running: 1 devices, config {sha}", \
        gateway.journal()
    assert gateway.main_pid() == pid
    assert '"event": "config_reloaded"' in gateway.journal()


def test_password_comes_from_the_credstore_and_stays_out_of_the_journal(
    gateway: Gateway,
) -> None:
    container = gateway.container
    pid = gateway.main_pid()
    with gateway.collector() as cloud:
        cloud.wait_for(lambda got: len(got) >= 2, timeout_s=30, what="events after the reload")
    assert PASSWORD not in container.run("cat", CONFIG).stdout
    environ = container.run("cat", f"/proc/{pid}/environ").stdout.split("\0")
    assert f"CREDENTIALS_DIRECTORY=/run/credentials/{UNIT}" in environ
    assert not [v for v in environ if PASSWORD in v]
    # Every field of every entry, every unit's, systemd's own included.
    journal = container.journal("-o", "export")
    assert "mqtt_connected" in journal
    assert PASSWORD not in journal


def test_sandbox_lets_the_agent_run_on_its_aot_kernels(gateway: Gateway) -> None:
    container = gateway.container
    pid = gateway.main_pid()
    status = dict(line.split(":\t", 1) for line in
                  container.run("cat", f"/proc/{pid}/status").stdout.splitlines() if ":\t" in line)
    assert status["Seccomp"].strip() == "2", status  # SystemCallFilter= is in force
    assert status["NoNewPrivs"].strip() == "1"
    assert int(status["Uid"].split()[0]) in DYNAMIC_UIDS
    assert status["CapEff"].strip() == "0000000000000000"
    journal = gateway.journal()
    assert '"form": "aot"' in journal and '"why_not_aot": null' in journal, journal
    assert "llvmlite" not in container.run("cat", f"/proc/{pid}/maps").stdout  # no numba
    assert "SIGSYS" not in journal and "code=killed" not in journal, journal


def test_watchdog_restarts_a_frozen_agent(gateway: Gateway) -> None:
    container = gateway.container
    # The shipped WatchdogSec=30, shortened for the test in a drop-in.
    dropin = "/etc/systemd/system/edge-agent.service.d/test-watchdog.conf"
    container.write(dropin, "[Service]\nWatchdogSec=3\n")
    try:
        container.systemctl("daemon-reload")
        container.systemctl("restart", UNIT)
        frozen = gateway.main_pid()
        restarts = int(container.show(UNIT, "NRestarts"))
        container.run("kill", "-STOP", str(frozen))

        def restarted() -> bool:
            pid = gateway.main_pid()
            return pid not in (0, frozen) and container.show(UNIT, "ActiveState") == "active"

        # 3 s without a ping, then RestartSec=5.
        wait_until(restarted, timeout_s=30, what="the agent restarted by the watchdog")
        assert int(container.show(UNIT, "NRestarts")) == restarts + 1
        journal = gateway.journal()
        assert "Watchdog timeout (limit 3s)!" in journal, journal
        assert "Failed with result 'watchdog'" in journal
    finally:
        (container.root / dropin.lstrip("/")).unlink()
        container.systemctl("daemon-reload")
        container.systemctl("restart", UNIT)


def test_upgrade_and_removal_keep_the_state_directory(
    gateway: Gateway, built_deb: Path, tmp_path: Path,
) -> None:
    container = gateway.container
    state = container.root / "var/lib/private/edge-agent"  # DynamicUser=: behind the symlink
    (state / "kept-by-the-test").write_text("unsent events are data\n")
    store = state / "events.sqlite"
    inode, seq = store.stat().st_ino, last_seq(container)

    # The same package as version +1: dpkg runs prerm upgrade, postinst configure OLD.
    tree = tmp_path / "tree"
    run(["dpkg-deb", "-R", str(built_deb), str(tree)])
    control = tree / "DEBIAN" / "control"
    version = next(line.split(": ", 1)[1] for line in control.read_text().splitlines()
                   if line.startswith("Version: "))
    control.write_text(control.read_text().replace(f"Version: {version}",
                                                   f"Version: {version}+1"))
    run(["dpkg-deb", "--root-owner-group", "-Znone", "-b", str(tree),
         str(container.root / "root" / "edge-agent-upgrade.deb")])
    pid = gateway.main_pid()
    container.run("dpkg", "-i", "/root/edge-agent-upgrade.deb", timeout_s=300)
    assert container.run("dpkg-query", "-W", "-f", "${Version}", "edge-agent").stdout \
        == f"{version}+1"
    assert gateway.main_pid() not in (0, pid), gateway.journal()
    assert container.show(UNIT, "ActiveState") == "active"
    with gateway.collector() as cloud:
        cloud.wait_for(bool, timeout_s=30, what="an event of the upgraded agent")
    # The upgraded agent went on with the same store and its sequence.
    assert store.stat().st_ino == inode
    assert last_seq(container) > seq

    seq = last_seq(container)
    container.run("apt-get", "remove", "-y", "edge-agent", timeout_s=300)
    assert container.show(UNIT, "LoadState") == "not-found"
    assert not (container.root / "opt/edge-agent").exists()
    assert (state / "kept-by-the-test").read_text() == "unsent events are data\n"
    assert (container.root / "var/lib/edge-agent").resolve() == state
    assert store.stat().st_ino == inode and last_seq(container) >= seq
    assert (container.root / CONFIG.lstrip("/")).exists()
    assert (container.root / "etc/credstore/mqtt-password").read_text() == PASSWORD


def last_seq(container: Container) -> int:
    """The store's `last_seq` counter, read by the container's own Python (read-only)."""
    code = ("import sqlite3; db = sqlite3.connect('file:/var/lib/edge-agent/events.sqlite"
            "?mode=ro', uri=True); print(db.execute(\"SELECT value FROM meta WHERE "
            "key = 'last_seq'\").fetchone()[0])")
    return int(container.run("python3", "-c", code).stdout)
