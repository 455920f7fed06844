"""Fixtures shared by every test layer: a real Mosquitto on a free port."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.detect.kernels.source import kernel_cache_dir
from agent.testing import Mosquitto

# Before numba is imported: like the agent, one kernel cache per version of the kernels'
# source, so that a change in kernels/episode.py alone never runs stale callers.
os.environ.setdefault("NUMBA_CACHE_DIR",
                      str(kernel_cache_dir(Path(__file__).resolve().parents[1] / ".numba-cache")))


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    with Mosquitto() as broker:
        yield broker
