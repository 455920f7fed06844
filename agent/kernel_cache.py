"""Where numba's compiled kernels are cached: one folder per version of the kernels' source.

numba checks a cached kernel against its own source file only: a kernel that calls a
function of another module (every anomaly kernel calls `kernels_episode.episode_step`)
would be loaded stale after an upgrade that changed only that other module. A folder
named after a hash of every kernel module's source rules that out. Imports no numba:
the folder must be set in NUMBA_CACHE_DIR before numba is imported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_DETECT = Path(__file__).resolve().parent / "detect"


def kernel_sources() -> list[Path]:
    """Every kernel module of agent/detect (`kernels*.py`): what the hash covers and what the
    ahead-of-time build compiles."""
    return sorted(_DETECT.glob("kernels*.py"))


def kernels_digest() -> str:
    """A hash of every kernel module's source: names the JIT cache folder and the
    ahead-of-time build (agent/detect/jit.py)."""
    digest = hashlib.sha256()
    for source in kernel_sources():
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def kernel_cache_dir(base: Path) -> Path:
    return base / kernels_digest()
