"""Debian roots for the packaging tests: a booted systemd container (systemd-nspawn) and an
emulated arm64 root entered by chroot (qemu-user-static through binfmt_misc).

The roots are made by packaging/debian-root.sh and cached as tarballs outside the source
tree, named after what made them; each test extracts a fresh copy (seconds) and deletes it.
Both share this machine's network namespace (no --private-network), so the agent inside
reaches a Mosquitto and a plc-sim started on the host's loopback. Where the machine refuses
(not root, a tool missing, nspawn unable to boot) the caller skips with `Refused`'s reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_ROOT = ROOT / "packaging" / "debian-root.sh"
SYSTEMD_PACKAGES = "systemd,systemd-sysv,dbus,python3,procps"
"""A Debian 12 that boots: systemd as PID 1, D-Bus, and what the package depends on."""
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
"""The whole environment of a command in a chroot: nothing of this machine's (PYTHONPATH)."""
EMULATED_BUILD = ROOT / "packaging" / "build-deb-emulated.sh"


def build_packages() -> str:
    """The packages of build-deb-emulated.sh's root, read from the script so that a test
    installing into that root finds the very tarball the build used (its `packages=`)."""
    for line in EMULATED_BUILD.read_text().splitlines():
        if line.startswith("packages="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{EMULATED_BUILD} names no packages= line")


class Refused(Exception):
    """The machine cannot give this root: the message says what refused and how to fix it."""


def host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def require_tools(*commands: str, make_target: str) -> None:
    """Refused unless running as root with every command on PATH (or in /usr/sbin)."""
    if os.geteuid() != 0:
        raise Refused("needs root (debootstrap, systemd-nspawn and chroot)")
    missing = [c for c in commands if not shutil.which(c, path=f"{os.environ['PATH']}:/usr/sbin")]
    if missing:
        raise Refused(f"{', '.join(missing)} missing: `make {make_target}` installs them from "
                      "Debian's packages")


def binfmt_enabled(arch: str) -> bool:
    qemu = {"arm64": "aarch64", "armhf": "arm"}.get(arch, arch)
    path = Path("/proc/sys/fs/binfmt_misc") / f"qemu-{qemu}"
    return path.exists() and path.read_text().splitlines()[:1] == ["enabled"]


def cached_root(name: str, arch: str, packages: str) -> Path:
    """The tarball of that root, made now (under the heavy-job lock) if it is not cached."""
    result = subprocess.run([str(DEBIAN_ROOT), "--name", name, "--arch", arch,
                             "--include", packages],
                            capture_output=True, text=True, check=False, timeout=3600)
    if result.returncode != 0:
        raise Refused(f"debian-root.sh could not make the {arch} root: {result.stderr[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def extract(tarball: Path, parent: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="root-", dir=parent))
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xzf", str(tarball)], check=True,
                   timeout=300)
    return root


def run(argv: Sequence[str], *, timeout_s: float = 120, check: bool = True,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """`argv`, its output captured; a failure names the command and what it printed."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                            timeout=timeout_s, input=input_text)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited with {result.returncode}:\n"
                             f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


class Container:
    """A Debian root booted by systemd-nspawn in the background, driven with nsenter.

    No host systemd (hence no machinectl, --register=no, --keep-unit): the container's
    own systemd is found as nspawn's child, and every command enters its namespaces.
    `boot()` tries the cgroup layouts nspawn knows in turn and says why each failed.
    """

    # SYSTEMD_NSPAWN_UNIFIED_HIERARCHY: 1 gives the container a cgroup2 tree of its own
    # (works beside a host's hybrid v1/v2 layout); unset lets nspawn choose; 0 is legacy v1.
    ATTEMPTS: tuple[dict[str, str], ...] = (
        {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}, {}, {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "0"})

    def __init__(self, root: Path, name: str, log_dir: Path) -> None:
        self.root = root
        self.name = name
        self.log_dir = log_dir
        self.pid = 0
        """The container's systemd (PID 1 inside), as this machine sees it."""
        self._nspawn: subprocess.Popen[bytes] | None = None

    def boot(self, timeout_s: float = 60.0) -> Self:
        failures = []
        for number, extra in enumerate(self.ATTEMPTS):
            reason = self._try_boot(extra, self.log_dir / f"nspawn-{number}.log", timeout_s)
            if reason is None:
                return self
            failures.append(f"[{' '.join(f'{k}={v}' for k, v in extra.items()) or 'default'}] "
                            f"{reason}")
        raise Refused("systemd-nspawn could not boot the container: " + " | ".join(failures))

    def _try_boot(self, extra: dict[str, str], log_path: Path, timeout_s: float) -> str | None:
        with open(log_path, "wb") as log:
            self._nspawn = subprocess.Popen(
                ["systemd-nspawn", "-D", str(self.root), f"--machine={self.name}",
                 "--register=no", "--keep-unit", "--private-users=no", "--console=passive",
                 "-b"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **extra}, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                self._nspawn = None
                return f"nspawn exited: {log_path.read_text(errors='replace')[-1500:].strip()}"
            if not self.pid:
                self.pid = _child_of(self._nspawn.pid)
            elif self._state() in ("running", "degraded"):
                return None
            time.sleep(0.1)
        state = self._state() if self.pid else "no init process"
        self.stop()
        return f"not booted within {timeout_s} s (system state: {state})"

    def _state(self) -> str:
        result = subprocess.run(self.enter("systemctl", "is-system-running"),
                                capture_output=True, text=True, check=False, timeout=30)
        return result.stdout.strip()

    def enter(self, *argv: str) -> list[str]:
        """The command line that runs `argv` inside the container, as its root."""
        return ["nsenter", "-t", str(self.pid), "-a", *argv]

    def run(self, *argv: str, timeout_s: float = 120, check: bool = True,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(self.enter(*argv), timeout_s=timeout_s, check=check, input_text=input_text)

    def systemctl(self, *args: str, timeout_s: float = 120,
                  check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, timeout_s=timeout_s, check=check)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "--property", prop, "--value", unit).stdout.strip()

    def journal(self, *args: str) -> str:
        """journalctl inside the container (`-u UNIT`, `-o export`), everything so far."""
        return self.run("journalctl", "--no-pager", *args).stdout

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """A file in the container's tree, written from this side (as root)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def stop(self) -> None:
        """Power the container off (nspawn passes SIGTERM on as an orderly shutdown)."""
        if self._nspawn is None:
            return
        self._nspawn.send_signal(signal.SIGTERM)
        try:
            self._nspawn.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self._nspawn.pid, signal.SIGKILL)
            self._nspawn.wait()
        self._nspawn = None
        self.pid = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _child_of(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
    return 0


class Chroot:
    """Commands run in `root` by chroot, in a private mount namespace of their own: /proc
    and /dev are mounted for the command and vanish with it, and the command is the process
    that `popen` returns (a signal sent to it reaches the program, not a wrapper)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def command(self, *argv: str) -> list[str]:
        script = ('set -e; mount -t proc proc "$1/proc"; mount --rbind /dev "$1/dev"; '
                  'root=$1; shift; exec chroot "$root" "$@"')
        return ["unshare", "--mount", "sh", "-c", script, "sh", str(self.root), *argv]

    def run(self, *argv: str, timeout_s: float = 300,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(*argv), capture_output=True, text=True,
                                check=False, timeout=timeout_s, env=CHROOT_ENV)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in {self.root} exited with "
                                 f"{result.returncode}:\n{result.stdout[-3000:]}"
                                 f"{result.stderr[-3000:]}")
        return result

    def popen(self, *argv: str, stderr: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(*argv), stdout=subprocess.DEVNULL, stderr=stderr,
                                text=True, env=CHROOT_ENV)
