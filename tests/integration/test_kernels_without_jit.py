"""The kernels also work as plain Python (NUMBA_DISABLE_JIT=1): a gateway where numba cannot
compile, and a debugger stepping through a kernel, run the very same code.

Runs the detector unit tests again in a child pytest with the JIT off (a few seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_detector_unit_tests_pass_with_numba_disabled() -> None:
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "tests/unit/test_anomaly_detectors.py", "tests/unit/test_window.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout
