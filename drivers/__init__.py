"""Device drivers: each turns a protocol into `SampleBatch`es behind one small interface."""

from drivers.base import Driver, ReadPlan
from drivers.samples import Quality, SampleBatch

__all__ = ["Driver", "Quality", "ReadPlan", "SampleBatch"]
