"""Exponential backoff with full jitter, so that many gateways (or devices) do not retry in step."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float = 1.0
    max_s: float = 30.0
    factor: float = 2.0
    _attempt: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def next_delay_s(self, cap_s: float | None = None) -> float:
        """A delay drawn from [cap/2, cap], cap growing with each attempt up to max_s (or a
        lower `cap_s` for this attempt)."""
        cap = min(self.max_s, self.initial_s * self.factor**self._attempt)
        if cap_s is not None:
            cap = min(cap, cap_s)
        self._attempt += 1
        return cap / 2 + self._rng.random() * cap / 2

    def reset(self) -> None:
        self._attempt = 0
