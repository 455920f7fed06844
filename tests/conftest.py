"""Fixtures shared by every test layer: a real Mosquitto on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.testing import Mosquitto


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    with Mosquitto() as broker:
        yield broker
