"""Retry backoff: exponential with jitter, capped."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with "equal jitter": half the delay fixed, half random."""

    base_seconds: float = 60.0
    max_seconds: float = 3600.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Return the seconds to wait before retry number `attempt` (1 = first retry)."""
        attempt = max(1, attempt)
        ceiling = min(self.max_seconds, self.base_seconds * (2 ** min(attempt - 1, 30)))
        roll = (rng or random).random()
        return ceiling / 2 + ceiling / 2 * roll
