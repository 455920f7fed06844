"""Compiles the kernels ahead of time into one extension module (jit.py says why).

    python -m agent.detect.kernels.build [--out DIR] [--force]

Run by `make kernels` and the packaging, with the interpreter and numpy the agent runs
with. The signatures are those `warm_up()` makes numba compile, so the extension takes
exactly what the detectors pass; generic code for the architecture (no host CPU features),
so one arm64 build runs on a Pi 4 and a Pi 5. Nothing to do when the extension for the
current source exists (unless --force); older ones are removed. No kernel is imported
before `build` has set EDGE_AGENT_KERNELS=jit and a scratch NUMBA_CACHE_DIR.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def _built(out: Path, name: str) -> list[Path]:
    return sorted(out.glob(f"{name}.*.so")) + sorted(out.glob(f"{name}.so"))


def _signature(dispatcher: Any, qualified: str) -> Any:
    """The one signature the agent calls `dispatcher` with; literal-typed ones (a constant
    argument numba specialised inside a caller) are left out, those callers carry them."""
    from numba import types

    sigs = [s for s in dispatcher.signatures
            if not any(isinstance(a, types.Literal) for a in s)]
    if not sigs:
        return None
    if len(sigs) > 1:
        raise SystemExit(f"build_kernels: {qualified} is called with {len(sigs)} signatures "
                         f"({', '.join(map(str, sigs))}); an extension exports one per kernel")
    return dispatcher.overloads[sigs[0]].signature


def kernels(modules: list[ModuleType]) -> list[tuple[str, Callable[..., Any], Any]]:
    """(exported name, Python function, signature) of every kernel warm_up compiled."""
    from numba.core.registry import CPUDispatcher

    from agent.detect.kernels.jit import exported_name

    out = []
    for module in modules:
        for attr, value in vars(module).items():
            if not isinstance(value, CPUDispatcher) or value.py_func.__module__ != module.__name__:
                continue
            name = exported_name(module.__name__, attr)
            sig = _signature(value, name)
            if sig is not None:
                out.append((name, value.py_func, sig))
    return out


def build(out: Path, force: bool = False) -> Path:
    os.environ["EDGE_AGENT_KERNELS"] = "jit"  # before the kernels are imported
    # numba would otherwise cache warm_up's kernels in __pycache__ beside the sources (in a
    # package's staging tree, naming its path); the extension is what is kept.
    scratch = tempfile.TemporaryDirectory(prefix="edge-agent-kernels-")
    os.environ.setdefault("NUMBA_CACHE_DIR", scratch.name)
    with scratch:
        return _build(out, force)


def _build(out: Path, force: bool) -> Path:
    from agent.detect.kernels.jit import aot_module_name, mode

    name = aot_module_name()
    existing = _built(out, name)
    if existing and not force:
        return existing[0]
    if mode() != "jit":
        raise SystemExit("build_kernels: numba is disabled (NUMBA_DISABLE_JIT=1): nothing "
                         "to compile with")
    from numba.pycc import CC  # type: ignore[attr-defined]

    from agent.detect.kernels import warm_up
    from agent.detect.kernels.source import MODULES

    # The very modules the hash in the extension's name covers: none can be left out.
    modules = [importlib.import_module(f"agent.detect.kernels.{name}") for name in MODULES]
    warm_up()
    cc = CC(name)  # type: ignore[no-untyped-call]
    cc.output_dir = str(out)
    cc.verbose = False
    for exported, function, sig in kernels(modules):
        cc.export(exported, sig)(function)  # type: ignore[no-untyped-call]
    cc.compile()
    for old in out.glob("_aot_*.so"):
        if not old.name.startswith(f"{name}."):
            old.unlink()
    built = _built(out, name)
    if not built:
        raise SystemExit(f"build_kernels: numba.pycc wrote no {name} into {out}")
    return built[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.detect.kernels.build",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE,
                        help="where the extension goes (default: beside the kernels)")
    parser.add_argument("--force", action="store_true", help="build even if it is there")
    args = parser.parse_args(argv)
    started = time.monotonic()
    path = build(args.out, args.force)
    print(f"kernels: {path} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
