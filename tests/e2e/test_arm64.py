"""The arm64 package (a Raspberry Pi 4/5, an arm64 Debian 12 gateway): built by `make deb
ARCH=arm64` in an emulated Debian root (packaging/build-deb-emulated.sh), installed by dpkg
into a fresh copy of that root, and run there under qemu-user-static: `edge-agent check`
and a short `edge-agent run` reading a plc-sim on this machine and sending to a Mosquitto
here (the chroot shares this machine's network).

Not here: systemd (a chroot has no PID 1 of its own), hence the unit and its credentials
(which are known to fail under qemu-user, for a system call it does not emulate):
test_systemd_container.py runs them on amd64.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from debian_roots import (
    Chroot,
    Refused,
    binfmt_enabled,
    build_packages,
    cached_root,
    extract,
    host_arch,
    require_tools,
    run,
)
from support import BACKGROUND_DEBS, build_deb, demo_tags, running_sim

from agent.testing import Mosquitto, MqttCollector

pytestmark = [pytest.mark.e2e, pytest.mark.container, pytest.mark.timeout(3600)]

VENV = "/opt/edge-agent/venv"
EM_AARCH64 = 183
"""ELF e_machine of arm64 code."""


@dataclass
class Arm64:
    deb: Path
    chroot: Chroot


@pytest.fixture(scope="module")
def arm64(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arm64]:
    """The arm64 .deb, and a copy of the root it was built in with the package installed."""
    try:
        require_tools("debootstrap", "unshare", "chroot", make_target="container-tools")
        if host_arch() != "arm64" and not binfmt_enabled("arm64"):
            raise Refused("binfmt_misc does not run arm64 programs here (qemu-aarch64 is not "
                          "registered): `make qemu-user` registers it")
        tarball = cached_root("build", "arm64", build_packages())
    except Refused as exc:
        pytest.skip(f"no emulated arm64 root on this machine: {exc}")
    base = tmp_path_factory.mktemp("arm64")
    # Started when the session began (conftest.py), else now; uncompressed (gzip: minutes
    # emulated).
    started = BACKGROUND_DEBS.get("arm64")
    deb = started.result(3000) if started else build_deb(base, "arm64", timeout_s=3000)
    root = extract(tarball, base)
    try:
        shutil.copy(deb, root / "root" / deb.name)
        chroot = Chroot(root)
        chroot.run("dpkg", "-i", f"/root/{deb.name}")
        yield Arm64(deb, chroot)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_package_is_built_for_arm64(arm64: Arm64) -> None:
    fields = run(["dpkg-deb", "-f", str(arm64.deb), "Architecture", "Depends"]).stdout
    assert fields.splitlines() == ["Architecture: arm64", "Depends: python3.11, procps"]
    kernels = list((arm64.chroot.root / VENV.lstrip("/")).glob(
        "lib/python3.11/site-packages/agent/detect/kernels/_aot_*.so"))
    assert len(kernels) == 1, kernels
    assert int.from_bytes(kernels[0].read_bytes()[18:20], "little") == EM_AARCH64
    version = arm64.chroot.run("edge-agent", "version").stdout
    assert "  kernels aot\n" in version, version


def test_installed_agent_checks_the_example_configuration(arm64: Arm64) -> None:
    checked = arm64.chroot.run("edge-agent", "check", "-c", "/etc/edge-agent/config.yaml.example")
    assert "OK" in checked.stdout


def test_agent_reads_plc_sim_and_sends_to_mosquitto(arm64: Arm64, tmp_path: Path) -> None:
    chroot = arm64.chroot
    with Mosquitto() as broker, running_sim(tmp_path, "sim", "--seed", "4") as sim:
        config = f"""gateway: {{id: gw-arm64, site: lab, state_dir: /var/lib/edge-agent}}
mqtt: {{host: 127.0.0.1, port: {broker.port}, tls: {{enabled: false}}}}
store: {{commit_interval_s: 0.1}}
aggregate: {{window_s: 1}}
devices:
  - name: compressor
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {sim.port}
    timeout_s: 2.0
    poll_interval_s: 0.5
{demo_tags()}"""
        (chroot.root / "etc/edge-agent/config.yaml").write_text(config)
        (chroot.root / "var/lib/edge-agent").mkdir(exist_ok=True)
        assert "OK" in chroot.run("edge-agent", "check", "-c", "/etc/edge-agent/config.yaml").stdout
        log_path = tmp_path / "agent.log"
        with open(log_path, "w") as log, \
                MqttCollector(broker.host, broker.port, "lab/gw-arm64/#") as cloud:
            agent = chroot.popen(f"{VENV}/bin/edge-agent", "run", "-c",
                                 "/etc/edge-agent/config.yaml", stderr=log)
            try:
                # Emulated, the agent starts in seconds rather than a fraction of one.
                got = cloud.wait_for(
                    lambda got: any(e.device == "compressor" and e.kind == "window"
                                    for _, e in got),
                    timeout_s=120, what="a window of the compressor from the arm64 agent")
            finally:
                agent.send_signal(signal.SIGTERM)
                code = agent.wait(timeout=60)
        assert code == 0, log_path.read_text()[-4000:]
    window = next(e for _, e in got if e.device == "compressor" and e.kind == "window")
    assert "motor_current_a" in window.data["tags"], window
    assert '"form": "aot"' in log_path.read_text()
