"""The registry of simulated machines the `plc-sim` command can serve.

Adding a machine means writing its model and its `ServedMachine` factory, then
one entry here; the CLI, its `--help` and the servers pick it up from this dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from plc_sim.compressor import Compressor
from plc_sim.compressor_modbus import served_compressor
from plc_sim.modbus_server import ServedMachine


@dataclass(frozen=True, slots=True)
class ScenarioOptions:
    """Options every scenario factory receives (a dataclass so new ones don't break factories)."""

    seed: int = 1


class Scenario(NamedTuple):
    description: str
    factory: Callable[[ScenarioOptions], ServedMachine]


def _compressor(options: ScenarioOptions) -> ServedMachine:
    return served_compressor(Compressor(seed=options.seed))


SCENARIOS: dict[str, Scenario] = {
    "compressor": Scenario(
        "air compressor with energy meter (off/idle/running load-unload cycle)",
        _compressor,
    ),
}
