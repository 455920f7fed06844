"""Fixtures of the end-to-end layer: one numba cache for the session, running simulators."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Sim, numba_cache_dir, running_sim


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
