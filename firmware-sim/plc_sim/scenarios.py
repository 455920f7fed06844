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
from plc_sim.faults import FAULT_KINDS, Fault, FaultKind
from plc_sim.modbus_server import ServedMachine


@dataclass(frozen=True, slots=True)
class ScenarioOptions:
    """Options every scenario factory receives (a dataclass so new ones don't break factories)."""

    seed: int = 1
    fault_onset_s: float = 120.0
    """Simulated seconds of normal operation before a fault scenario's fault begins."""


class Scenario(NamedTuple):
    description: str
    factory: Callable[[ScenarioOptions], ServedMachine]


def _compressor(options: ScenarioOptions) -> ServedMachine:
    return served_compressor(Compressor(seed=options.seed))


def _faulty_compressor(kind: FaultKind) -> Callable[[ScenarioOptions], ServedMachine]:
    def factory(options: ScenarioOptions) -> ServedMachine:
        fault = Fault(kind, onset_s=options.fault_onset_s)
        return served_compressor(Compressor(seed=options.seed, fault=fault), scenario=kind)

    return factory


_FAULT_DESCRIPTIONS: dict[str, str] = {
    "bearing-wear": "compressor whose bearing wears: vibration, current and power rise",
    "overheating": "compressor whose cooler fouls: discharge temperature rises",
    "clogged-filter": "compressor with a clogging filter: air flow falls, pressure does not",
    "stuck-sensor": "compressor whose pressure sensor freezes at one value",
    "left-idling": "compressor left idling with no air demand (never switches off)",
}

SCENARIOS: dict[str, Scenario] = {
    "compressor": Scenario(
        "air compressor with energy meter (off/idle/running load-unload cycle)",
        _compressor,
    ),
    **{kind: Scenario(f"{_FAULT_DESCRIPTIONS[kind]} (after --fault-onset-s)",
                      _faulty_compressor(kind))  # type: ignore[arg-type]
       for kind in FAULT_KINDS},
}
