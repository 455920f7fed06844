"""How the kernels run: compiled ahead of time, compiled by numba at start, or as Python.

`import numba` alone costs about 120 MiB of RSS, more than the rest of the agent on a
Raspberry Pi, so the kernels are also compiled ahead of time (numba.pycc, `python -m
agent.detect.kernels.build`) into one extension module that needs only numpy. This module's
`njit` hands out each kernel's compiled twin when the extension was built from the kernels'
current source (its name carries their hash), and then never imports numba. Otherwise numba
compiles them at start, cached in NUMBA_CACHE_DIR; NUMBA_DISABLE_JIT=1 runs them as Python;
EDGE_AGENT_KERNELS=jit forces numba (the build, and the tests that compare the forms).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal, TypeVar

from agent.detect.kernels.source import kernels_digest

F = TypeVar("F", bound=Callable[..., Any])
Mode = Literal["aot", "jit", "python"]

FORCE_VARIABLE = "EDGE_AGENT_KERNELS"


def aot_module_name() -> str:
    """The extension's module name for the kernels' current source."""
    return f"_aot_{kernels_digest()}"


def exported_name(module: str, function: str) -> str:
    """A kernel's name in the extension: module and function (`_fit` is not unique alone)."""
    return f"{module.rsplit('.', 1)[-1]}__{function}"


def _load_aot() -> tuple[ModuleType | None, str]:
    if os.environ.get(FORCE_VARIABLE) == "jit":
        return None, f"{FORCE_VARIABLE}=jit"
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        return None, "NUMBA_DISABLE_JIT=1"
    name = aot_module_name()
    try:
        return importlib.import_module(f"agent.detect.kernels.{name}"), ""
    except ImportError as exc:
        # Not built for this source (the usual reason), or built against another numpy.
        return None, f"no ahead-of-time build {name} ({exc})"


_AOT, _WHY_NOT_AOT = _load_aot()


def mode() -> Mode:
    if _AOT is not None:
        return "aot"
    return "python" if os.environ.get("NUMBA_DISABLE_JIT") == "1" else "jit"


def why_not_aot() -> str:
    """Why the kernels are not the ahead-of-time ones ('' when they are)."""
    return _WHY_NOT_AOT


def njit(**options: Any) -> Callable[[F], F]:
    """numba's `njit(**options)`, or the kernel's ahead-of-time twin when there is one.

    A kernel the extension does not export (one only ever inlined into others) stays the
    Python function: the compiled callers carry their own copy of it.
    """

    def decorate(function: F) -> F:
        if _AOT is not None:
            compiled: F = getattr(_AOT, exported_name(function.__module__, function.__name__),
                                  function)
            return compiled
        from numba import njit as numba_njit

        jitted: F = numba_njit(**options)(function)
        return jitted

    return decorate
