"""Packaging: the systemd unit, the .deb and install.sh, checked as an operator would meet them.

- The unit passes `systemd-analyze verify` (warnings count as failures) and keeps the
  contract agent/supervisor/runtime.py implements (Type=notify, watchdog, reload, credentials).
- `make deb` builds a package that `dpkg --root` installs into a scratch root; the files land
  where the unit expects them and the installed agent runs `edge-agent check` on the example
  configuration. Where the kernel allows a private mount namespace, the scratch root's
  /opt/edge-agent is mounted at the real /opt/edge-agent so that the installed unit is
  verified unmodified and the binary runs through its own shebang.
- `packaging/install.sh --prefix` builds the same tree without dpkg, twice (idempotent).

What these tests cannot show without systemd as PID 1 (systemd starting the unit, its
hardening at run time) is shown in a booted container by test_systemd_container.py; the
arm64 package is built and run under emulation by test_arm64.py.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.testing import console_script

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "edge-agent.service"
EXAMPLE = ROOT / "config" / "example.yaml"
VENV = "/opt/edge-agent/venv"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, values in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """`systemd-analyze`, installed from Debian's systemd package when absent and apt is here."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("systemd-analyze is missing, and apt-get (as root) is not here to install "
                    "Debian's systemd package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "systemd"], check=True, env=env)
    found = shutil.which("systemd-analyze")
    assert found, "apt-get installed systemd but systemd-analyze is still missing"
    return found


def verify(systemd_analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    # --man=no: Documentation= names no man page to look up. Unknown keys or bad values
    # are only warnings (exit 0), so callers also require an empty stderr.
    return subprocess.run([systemd_analyze, "verify", "--man=no", str(unit)],
                          check=False, capture_output=True, text=True, timeout=60)


def test_unit_keeps_the_contract_with_the_agent() -> None:
    settings = unit_settings(UNIT.read_text())
    expected = {
        "Type": "notify",
        "NotifyAccess": "exec",
        "ExecStart": f"{VENV}/bin/edge-agent run -c ${{CONFIGURATION_DIRECTORY}}/config.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "5",
        "TimeoutStopSec": "10",
        "StateDirectory": "edge-agent",
        "ConfigurationDirectory": "edge-agent",
        "LoadCredential": "mqtt-password",
        "DynamicUser": "yes",
        "SupplementaryGroups": "dialout",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "Environment": "PYTHONUNBUFFERED=1",
    }
    assert {key: settings.get(key, ["<absent>"])[-1] for key in expected} == expected
    # RELOADING=1 from ExecReload= first: systemd 252 then waits for the agent's READY=1
    # (tests/e2e/test_systemd_container.py shows it under a real systemd).
    assert settings["ExecReload"] == ["/bin/systemd-notify RELOADING=1",
                                      "/bin/kill -HUP $MAINPID"]
    # numba's JIT maps code writable then executable; ProtectClock would deny the
    # read-only adjtimex of agent/clock.py.
    assert "MemoryDenyWriteExecute" not in settings
    assert "ProtectClock" not in settings


def test_unit_passes_systemd_analyze_verify(systemd_analyze: str, tmp_path: Path) -> None:
    # verify requires ExecStart's program to exist: the copy points at this venv's agent.
    copy = tmp_path / "edge-agent.service"
    agent = console_script("edge-agent")
    copy.write_text(UNIT.read_text().replace(f"{VENV}/bin/edge-agent", agent))
    result = verify(systemd_analyze, copy)
    assert (result.returncode, result.stderr) == (0, "")


def test_verify_as_used_here_reports_a_misspelt_key(systemd_analyze: str, tmp_path: Path) -> None:
    copy = tmp_path / "edge-agent.service"
    text = UNIT.read_text().replace(f"{VENV}/bin/edge-agent", console_script("edge-agent"))
    copy.write_text(text.replace("WatchdogSec=", "WatchdgSec="))
    assert "Unknown key 'WatchdgSec'" in verify(systemd_analyze, copy).stderr


# --- the .deb -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed_deb(
    built_deb: Path, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, Path, str]]:
    """The session's .deb (tests/e2e/conftest.py), installed by dpkg into a scratch root.

    Returns the package, the root and what dpkg printed. dpkg needs its database in the root;
    the dependency on python3.11 is satisfied by the host, not by that database, hence
    --force-depends; the maintainer scripts run outside the root with DPKG_ROOT set.
    """
    deb = built_deb
    root = tmp_path_factory.mktemp("deb") / "root"
    for directory in ("var/lib/dpkg/info", "var/lib/dpkg/updates"):
        (root / directory).mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    installed = subprocess.run(
        ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", "-i", str(deb)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert installed.returncode == 0, installed.stderr
    yield deb, root, installed.stdout


@pytest.mark.timeout(600)
def test_deb_puts_files_where_the_unit_expects_them(installed_deb: tuple[Path, Path, str]) -> None:
    deb, root, _ = installed_deb
    unit = root / "lib/systemd/system/edge-agent.service"
    assert unit.read_text() == UNIT.read_text()
    program = unit_settings(unit.read_text())["ExecStart"][0].split()[0]
    binary = root / program.lstrip("/")
    assert os.access(binary, os.X_OK)
    # The venv was built in a staging tree, then made to belong at /opt/edge-agent/venv.
    assert binary.read_text().splitlines()[0] == f"#!{VENV}/bin/python"
    assert os.readlink(root / "usr/bin/edge-agent") == program
    assert (root / "etc/edge-agent/config.yaml.example").read_text() == EXAMPLE.read_text()
    profiles = sorted(p.name for p in (EXAMPLE.parent / "profiles").glob("*.yaml"))
    assert profiles, "config/profiles/ holds the device profiles"
    assert sorted(p.name for p in (root / "usr/share/edge-agent/profiles").glob("*.yaml")) == profiles
    assert not (root / "etc/edge-agent/config.yaml").exists()
    interpreter = os.readlink(root / VENV.lstrip("/") / "bin/python3.11")
    assert interpreter == "/usr/bin/python3.11"

    def field(name: str) -> str:
        return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True,
                              text=True, check=True).stdout.strip()

    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert (field("Package"), field("Version"), field("Architecture"), field("Depends")) == (
        "edge-agent", VERSION, arch, "python3.11, procps")  # procps: the unit's /bin/kill
    assert "root@localhost" not in field("Maintainer") and "@" in field("Maintainer")


WRITE_TOOLS = ("uawrite", "uacall", "uaclient", "uaserver", "pymodbus.simulator", "plc-sim")


def assert_read_only(venv: Path) -> None:
    """Nothing on the gateway writes to a PLC: asyncua's and pymodbus's tools are gone,
    and so is the simulator; what is left in bin/ is the agent, Python and pip."""
    programs = {p.name for p in (venv / "bin").iterdir()}
    assert "edge-agent" in programs and not programs & set(WRITE_TOOLS), sorted(programs)
    assert not {p for p in programs if p.startswith("ua")}, sorted(programs)
    assert not list(venv.glob("lib/python3.*/site-packages/plc_sim")), "plc_sim is installed"
    # Nor the fleet side: its package and its dependencies stay on the server.
    for package in ("fleet", "psycopg", "starlette", "uvicorn", "jinja2"):
        assert not list(venv.glob(f"lib/python3.*/site-packages/{package}")), package


@pytest.mark.timeout(600)
def test_deb_ships_no_write_tool_and_its_docs(installed_deb: tuple[Path, Path, str]) -> None:
    _, root, _ = installed_deb
    assert_read_only(root / VENV.lstrip("/"))
    doc = root / "usr/share/doc/edge-agent"
    assert (doc / "technician-guide.md").read_text() == (
        ROOT / "docs" / "technician-guide.md").read_text()
    assert (doc / "copyright").read_text().startswith("Format: https://www.debian.org/")
    changelog = gzip.decompress((doc / "changelog.Debian.gz").read_bytes()).decode()
    assert changelog.startswith(f"edge-agent ({VERSION}) ")
    man = gzip.decompress((root / "usr/share/man/man1/edge-agent.1.gz").read_bytes()).decode()
    man = man.replace("\\-", "-")  # roff's escaped hyphens
    assert man.startswith('.TH EDGE-AGENT "1"') and "relearn" in man
    assert "/etc/edge-agent/config.yaml" in man  # the default of -c, not the build's environment


@pytest.mark.timeout(600)
def test_deb_postinst_does_not_start_without_a_configuration(
    installed_deb: tuple[Path, Path, str],
) -> None:
    _, _, output = installed_deb
    assert "edge-agent: not started: /etc/edge-agent/config.yaml does not exist" in output


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("config", "says"), [
    ("example", ""),
    ("gateway:\n  idd: x\n", "edge-agent: not started: 'edge-agent check -c"),
])
def test_deb_postinst_checks_an_existing_configuration(
    installed_deb: tuple[Path, Path, str], tmp_path: Path, config: str, says: str,
) -> None:
    # The postinst again, as dpkg runs it for another root, over a root that has a
    # config.yaml (the installed tree is shared through a symlink). DPKG_ROOT keeps it away
    # from this machine's systemctl; on a gateway a passing check enables and starts.
    _, root, _ = installed_deb
    other = tmp_path / "root"
    (other / "etc/edge-agent").mkdir(parents=True)
    (other / "opt").symlink_to(root / "opt")
    text = EXAMPLE.read_text() if config == "example" else config
    (other / "etc/edge-agent/config.yaml").write_text(text)
    postinst = root / "var/lib/dpkg/info/edge-agent.postinst"
    result = subprocess.run([str(postinst), "configure", ""],
                            env={**os.environ, "DPKG_ROOT": str(other)},
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "does not exist" not in result.stdout
    assert (says in result.stdout) if says else result.stdout == ""


@pytest.mark.timeout(600)
def test_installed_agent_checks_the_example_configuration(
    installed_deb: tuple[Path, Path, str],
) -> None:
    # The venv's python is started by its path inside the scratch root: Python finds the
    # venv through the pyvenv.cfg beside it, whatever directory that is. cwd is the root,
    # so that the source tree cannot be imported instead of the installed agent.
    _, root, _ = installed_deb
    venv = root / VENV.lstrip("/")
    # Nor through a PYTHONPATH the tests run with (a git worktree's checkout).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(venv / "bin/python"), str(venv / "bin/edge-agent"), "check",
         "-c", str(root / "etc/edge-agent/config.yaml.example")],
        cwd=root, env=env, check=False, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    imported = subprocess.run(
        [str(venv / "bin/python"), "-c", "import agent, numba; print(agent.__file__)"],
        cwd=root, env=env, capture_output=True, text=True, check=True).stdout
    assert imported.startswith(f"{venv}/lib/python3.11/site-packages/agent/")
    # The package carries the kernels compiled ahead of time: its agent never loads numba.
    code = ("import sys; from agent.detect import kernels; from agent.detect.kernels import jit; "
            "kernels.warm_up(); "
            "print(jit.mode(), 'numba' in sys.modules, jit.why_not_aot())")
    kernels = subprocess.run([str(venv / "bin/python"), "-c", code], cwd=root, env=env,
                             capture_output=True, text=True, check=True).stdout
    assert kernels.split()[:2] == ["aot", "False"], kernels


def private_opt_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "sh", "-c",
                            "mount --make-rprivate / && mount -t tmpfs tmpfs /opt"],
                           check=False, capture_output=True, timeout=10)
    return probe.returncode == 0


@pytest.mark.timeout(600)
def test_installed_unit_verifies_and_its_binary_runs_at_the_real_path(
    installed_deb: tuple[Path, Path, str], systemd_analyze: str,
) -> None:
    if not private_opt_works():
        pytest.skip("no private mount namespace here (unshare --mount needs CAP_SYS_ADMIN): "
                    "the installed tree was checked at its scratch path only")
    _, root, _ = installed_deb
    # In a private mount namespace, a tmpfs over /opt and the scratch root's /opt/edge-agent
    # bound onto it: the host's /opt is untouched, the unit and the shebang are unmodified.
    script = (
        "set -e; mount --make-rprivate /; mount -t tmpfs tmpfs /opt; mkdir /opt/edge-agent; "
        f"mount --bind {root}/opt/edge-agent /opt/edge-agent; "
        f"{systemd_analyze} verify --man=no {root}/lib/systemd/system/edge-agent.service; "
        f"{root}/usr/bin/edge-agent check -c {root}/etc/edge-agent/config.yaml.example"
    )
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], cwd=root, check=False,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    # systemd-analyze said nothing; the agent's only remark is about the example's password.
    assert [line for line in result.stderr.splitlines() if "mqtt.username" not in line] == []


# --- install.sh -----------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_install_script_builds_the_tree_under_a_prefix_twice(tmp_path: Path) -> None:
    prefix = tmp_path / "gateway"
    script = ROOT / "packaging/install.sh"
    # The kernels compiled once per source and interpreter (a minute), as `make deb` keeps them.
    cache = subprocess.run([str(ROOT / "packaging/kernel-cache.sh"), "dir", "install",
                            sys.executable], check=True, capture_output=True, text=True
                           ).stdout.strip()
    for _ in range(2):  # the second run upgrades in place
        result = subprocess.run(
            [str(script), "--prefix", str(prefix), "--python", sys.executable,
             "--kernel-cache", cache],
            check=False, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "systemd not told" in result.stdout
    assert (prefix / "etc/systemd/system/edge-agent.service").read_text() == UNIT.read_text()
    assert (prefix / "etc/edge-agent/config.yaml.example").read_text() == EXAMPLE.read_text()
    assert not (prefix / "etc/edge-agent/config.yaml").exists()
    link = prefix / "usr/local/bin/edge-agent"
    assert os.readlink(link) == str(prefix / VENV.lstrip("/") / "bin/edge-agent")
    checked = subprocess.run([str(link), "check", "-c", str(EXAMPLE)], cwd=tmp_path,
                             check=False, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    version = subprocess.run([str(link), "version"], cwd=tmp_path, check=True,
                             capture_output=True, text=True, timeout=60).stdout
    assert "  kernels aot\n" in version, version
    assert_read_only(prefix / VENV.lstrip("/"))
