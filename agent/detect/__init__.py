"""Local detection: turns sample batches into events (numba kernels underneath)."""

from agent.detect.base import Detector
from agent.detect.window import WindowAggregator

__all__ = ["Detector", "WindowAggregator"]
