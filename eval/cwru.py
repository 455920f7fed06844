"""Placeholder replaced by the CWRU work."""
from pathlib import Path
from typing import Any


def has_cwru(folder: Path) -> bool:
    return False


def cwru(folder: Path) -> dict[str, Any]:
    return {}
