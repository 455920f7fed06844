"""Fixtures of the end-to-end layer: one numba cache for the session, running simulators,
the .deb built once for the packaging and the systemd container tests, and the arm64 .deb
built in the background while the rest of the suite runs (minutes under emulation)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from debian_roots import Refused, binfmt_enabled, host_arch, require_tools
from support import BACKGROUND_DEBS, DebBuild, Sim, build_deb, numba_cache_dir, running_sim

ARM64_MODULE = "test_arm64.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The arm64 tests go last: their package is built meanwhile (pytest_collection_finish)."""
    items.sort(key=lambda item: item.path.name == ARM64_MODULE)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start `make deb ARCH=arm64` now, at a low priority, when its tests are to run and this
    machine can build it (else their fixture says why it skips)."""
    if not any(item.path.name == ARM64_MODULE for item in session.items):
        return
    try:
        require_tools("debootstrap", "unshare", "chroot", make_target="container-tools")
        if host_arch() != "arm64" and not binfmt_enabled("arm64"):
            return
    except Refused:
        return
    out = Path(tempfile.mkdtemp(prefix="edge-agent-arm64-deb-"))
    BACKGROUND_DEBS["arm64"] = DebBuild(out, "arm64", nice=10)


def pytest_sessionfinish() -> None:
    for build in BACKGROUND_DEBS.values():
        build.stop()
        shutil.rmtree(build.out, ignore_errors=True)


@pytest.fixture(scope="session")
def numba_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One kernel cache for the session, so each agent start does not compile again."""
    return numba_cache_dir(tmp_path_factory)


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[list[Sim]]:
    """Two simulated compressors with different seeds."""
    with running_sim(tmp_path, "sim-1", "--seed", "1") as one, \
            running_sim(tmp_path, "sim-2", "--seed", "2") as two:
        yield [one, two]


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make deb` for this machine's architecture, once for the session (about 2 minutes)."""
    if shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None:
        pytest.skip("dpkg-deb is missing: the .deb can only be built on Debian or a derivative")
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return build_deb(tmp_path_factory.mktemp("deb"), arch)
