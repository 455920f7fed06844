"""docs/architecture.md held to the tree: every module named, every name a module, the
floors kept (a stage imports only its own floor and those below), and no import cycle
between the modules of agent/ and drivers/ (imports inside functions included)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
PACKAGES = ("agent", "drivers", "fleet")

FLOORS = {
    "drivers": 0,
    "agent": 1, "agent.events": 1, "agent.clock": 1, "agent.config": 1,
    "agent.detect": 2,
    "agent.acquire": 3,
    "agent.store": 4,
    "agent.uplink": 5,
    "agent.service": 6,
    "agent.supervisor": 7,
    "agent.cli": 8, "agent.testing": 8,
    "fleet": 9,
}
"""The floor of each stage, as the page's "Floors" table gives it."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES
            for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of agent/ and drivers/ that `path` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the module pkg.sub when there is one.
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known
                     else node.module for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, known) - {name} for name, path in known.items()}


def _floor(module: str) -> int:
    prefix = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return FLOORS[prefix]


def _named_on_page() -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", PAGE.read_text(), re.MULTILINE))


def test_every_module_and_package_is_named_on_the_page() -> None:
    named = _named_on_page()
    expected = set()
    for path in _modules().values():
        rel = path.relative_to(ROOT)
        expected.add(f"{rel.parent}/" if path.name == "__init__.py" else str(rel))
    missing = sorted(expected - named)
    assert not missing, f"docs/architecture.md names no row for: {missing}"


def test_every_row_of_the_page_names_something_that_exists() -> None:
    gone = sorted(n for n in _named_on_page() if not (ROOT / n).exists())
    assert not gone, f"docs/architecture.md names what does not exist: {gone}"


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_a_stage_imports_only_its_own_floor_and_those_below() -> None:
    upward = sorted(f"{source} -> {target}" for source, targets in _graph().items()
                    for target in targets if _floor(target) > _floor(source))
    assert not upward, f"imports of a later stage: {upward}"


FLEET_MAY_USE = ("drivers.settings", "agent.events", "agent.config.loader",
                 "agent.uplink.presence", "agent.config.signed")
"""What the fleet side takes of the agent: the event and status codecs, the configuration
loader and its base model, the signing of messages to gateways; nothing of the agent's
runtime."""


def test_the_fleet_side_uses_only_the_agents_codecs_and_config() -> None:
    leaks = sorted(f"{source} -> {target}" for source, targets in _graph().items()
                   if source.startswith("fleet") for target in targets
                   if not target.startswith("fleet") and target not in FLEET_MAY_USE)
    assert not leaks, f"the fleet side imports the agent's runtime: {leaks}"


def test_cli_and_testing_are_imported_by_nothing_else_of_the_product() -> None:
    leaves = ("agent.cli", "agent.testing")
    leaks = sorted(f"{source} -> {target}" for source, targets in _graph().items()
                   for target in targets
                   if target.startswith(leaves) and not source.startswith(leaves))
    assert not leaks, f"the product imports its command line or test helpers: {leaks}"


@pytest.mark.parametrize("source,target", [("agent.acquire.task", "agent.uplink.client"),
                                           ("agent.detect.base", "agent.store.queue")])
def test_the_floor_check_would_catch_an_upward_import(source: str, target: str) -> None:
    assert _floor(target) > _floor(source)


def test_the_top_of_agent_holds_only_folders_and_the_ground_floor() -> None:
    files = sorted(p.name for p in (ROOT / "agent").glob("*.py"))
    assert set(files) <= {"__init__.py", "__main__.py", "events.py", "clock.py"}, files


def test_every_module_that_compiles_kernels_is_in_the_kernel_list() -> None:
    """The hash and the ahead-of-time build cover `source.MODULES` only: a kernel module
    missing from it would run stale from numba's cache, or under numba in the agent."""
    from agent.detect.kernels.source import MODULES

    folder = ROOT / "agent" / "detect" / "kernels"
    compiling = sorted(p.stem for p in folder.glob("*.py") if "@njit(" in p.read_text())
    assert sorted(MODULES) == compiling
