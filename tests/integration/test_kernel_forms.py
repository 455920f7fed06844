"""The kernels in each of their forms (agent/detect/kernels/jit.py): compiled ahead of time (what the
agent runs; the suite itself runs them so), compiled by numba at start (the fallback when
the extension is missing or stale), and as plain Python (NUMBA_DISABLE_JIT=1: a gateway
where numba cannot compile, a debugger stepping through a kernel). The same detector unit
tests, with their exact expected numbers, must pass in every form.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.detect.kernels import jit

ROOT = Path(__file__).resolve().parents[2]
UNIT_TESTS = ("tests/unit/test_anomaly_detectors.py", "tests/unit/test_band_rms.py",
              "tests/unit/test_window.py", "tests/unit/test_machine_kernels.py",
              "tests/unit/test_machine_detector.py", "tests/unit/test_machine_dwell_energy.py")
BAND_KERNELS = ["band___block", "band__band_rms_batch", "band__fft_radix2",
                "band__rfft_power"]


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("env", [{"NUMBA_DISABLE_JIT": "1"}, {jit.FORCE_VARIABLE: "jit"}],
                         ids=["python", "jit"])
def test_detector_unit_tests_pass_in_the_other_forms(env: dict[str, str]) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         *UNIT_TESTS],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout


def test_a_missing_build_falls_back_to_numba_and_says_why() -> None:
    code = ("import agent.detect.kernels.source as k; k.kernels_digest = lambda: 'not-built'; "
            "import sys; from agent.detect import kernels; from agent.detect.kernels import jit; "
            "kernels.warm_up(); "
            "print(jit.mode(), 'numba' in sys.modules); print(jit.why_not_aot())")
    run = _python(code)
    assert run.returncode == 0, run.stderr
    first, why = run.stdout.splitlines()[:2]
    assert first == "jit True"
    assert why.startswith("no ahead-of-time build _aot_not-built")


def test_numba_disabled_wins_over_the_ahead_of_time_build() -> None:
    run = _python("from agent.detect.kernels import jit; print(jit.mode(), jit.why_not_aot())",
                  NUMBA_DISABLE_JIT="1")
    assert run.stdout.split() == ["python", "NUMBA_DISABLE_JIT=1"], run.stdout + run.stderr


def test_the_build_compiles_the_band_kernels_with_the_signatures_warm_up_records(
        tmp_path: Path) -> None:
    """What `python -m agent.detect.kernels.build` exports: every kernel warm_up() compiled, one
    signature each (it stops otherwise), among them the band kernel and the FFT it calls.
    With `rms` beside it: both use episode_step, inlined into each caller (numba's
    `inline="always"`), so it is no kernel of its own. A fresh numba cache, as the build's:
    a kernel loaded from a cache compiles none of its callees."""
    code = ("import importlib; from agent.detect.kernels.build import kernels; "
            "from agent.detect import kernels as k; from agent.detect.kernels.source import MODULES; "
            "k.warm_up({'rms', 'band_rms'}); mods = [importlib.import_module("
            "f'agent.detect.kernels.{m}') for m in MODULES]; "
            "print(' '.join(sorted(n for n, _, _ in kernels(mods))))")
    run = _python(code, NUMBA_CACHE_DIR=str(tmp_path), **{jit.FORCE_VARIABLE: "jit"})
    assert run.returncode == 0, run.stderr[-2000:]
    exported = run.stdout.split()
    assert [n for n in exported if n.startswith("band__")] == BAND_KERNELS
    assert "episode__episode_step" not in exported
    assert "univariate__rms_batch" in exported


def test_the_band_kernels_run_ahead_of_time_compiled_as_built() -> None:
    """The suite runs the kernels as the agent does: from the extension (`make kernels`)."""
    names = ["band_rms_batch", "rfft_power", "fft_radix2"]
    code = ("from agent.detect.kernels import band as b, jit; print(jit.mode(), "
            f"*[type(getattr(b, n)).__name__ for n in {names!r}])")
    run = _python(code)
    assert run.stdout.split() == ["aot"] + ["builtin_function_or_method"] * 3, (
        run.stdout + run.stderr + "(run `make kernels`)")


def test_the_mset_kernels_run_ahead_of_time_compiled_as_built() -> None:
    """The batch kernel, the fit and the solve of `mset` come from the extension too (its SPRT
    step is called with constant planes, so numba specialises it inside `_close_row`)."""
    names = ["mset_batch", "_close_row", "_fit", "_estimate", "cholesky_solve"]
    code = ("from agent.detect.kernels import mset as m, jit; print(jit.mode(), "
            f"*[type(getattr(m, n)).__name__ for n in {names!r}])")
    run = _python(code)
    assert run.stdout.split() == ["aot"] + ["builtin_function_or_method"] * 5, (
        run.stdout + run.stderr + "(run `make kernels`)")
