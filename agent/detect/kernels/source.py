"""The hash of the kernels' source: names numba's cache folder and the ahead-of-time build.

numba checks a cached kernel against its own file only, so a kernel calling into another
module (every anomaly kernel calls `episode.episode_step`) would load stale after an
upgrade that changed only that module; one folder per hash of every kernel module rules
that out. Imports no numba: NUMBA_CACHE_DIR must be set before numba is imported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODULES = ("counter", "episode", "runs", "state", "window", "univariate", "novelty", "pca", "mset",
           "band", "machine")
"""The kernel modules of this package, by name: the hash covers them, the build compiles them."""

HERE = Path(__file__).resolve().parent


def kernel_sources() -> list[Path]:
    """The source file of every module in `MODULES`: what the hash covers."""
    return [HERE / f"{name}.py" for name in MODULES]


def kernels_digest() -> str:
    """A hash of every kernel module's name and source (16 hex digits)."""
    digest = hashlib.sha256()
    for source in kernel_sources():
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def kernel_cache_dir(base: Path) -> Path:
    return base / kernels_digest()
