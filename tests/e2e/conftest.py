"""Fixtures of the end-to-end layer: one numba cache for the session, running simulators,
the .deb built once for the packaging and the systemd container tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Sim, build_deb, numba_cache_dir, running_sim


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
