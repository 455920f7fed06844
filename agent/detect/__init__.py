"""Local detection: turns sample batches into events (numba kernels underneath)."""

from agent.detect.base import Detector, DetectorChain, ScoringDetector
from agent.detect.quality import QualityChanges
from agent.detect.raw import RawSamples
from agent.detect.window import WindowAggregator

__all__ = ["Detector", "DetectorChain", "QualityChanges", "RawSamples", "ScoringDetector",
           "WindowAggregator"]
