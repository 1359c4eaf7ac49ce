"""The pace of a drain: a rate that starts low and grows in steps (DESIGN.md, "Drains").

After a maintenance the backlog is released at `initial` messages a second, multiplied
by `factor` every `step` seconds, up to `maximum` (the relay's max rate) when there is
one. `allowance(t)` is how many messages the ramp lets out in its first `t` seconds of
running: the integral of the rate, so a drain that releases no more than that is never
above the ramp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BURST_SECONDS = 0.1
MIN_BURST = 4.0  # messages: half a relay's sessions by default, so sends stay under rate + sessions


@dataclass(frozen=True)
class Ramp:
    """A drain's pace."""

    initial: float = 5.0  # messages per second at the start
    factor: float = 2.0  # the rate is multiplied by this every step
    step: float = 30.0  # seconds
    maximum: float | None = None  # messages per second at most; None: no ceiling

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.step <= 0:
            raise ValueError("a ramp needs initial > 0, factor >= 1 and step > 0")
        if self.maximum is not None and self.maximum <= 0:
            raise ValueError("a ramp's maximum must be above 0")

    def rate(self, elapsed: float) -> float:
        """Return the rate (messages per second) after `elapsed` seconds of running."""
        steps = max(0, math.floor(elapsed / self.step))
        rate = self.initial * self.factor ** min(steps, 1000)
        return min(rate, self.maximum) if self.maximum is not None else rate

    def integral(self, elapsed: float) -> float:
        """Return how many messages the ramp lets out in its first `elapsed` seconds, as a
        real number (the integral of its rate)."""
        if elapsed <= 0:
            return 0.0
        total, start = 0.0, 0.0
        while start < elapsed:
            end = min(elapsed, start + self.step)
            total += self.rate(start) * (end - start)
            if self.maximum is not None and self.rate(start) >= self.maximum:
                return total + self.maximum * (elapsed - end)  # flat from here on
            if total > 1e12:
                return total
            start = end
        return total

    def allowance(self, elapsed: float) -> int:
        """Return how many whole messages the ramp lets out in its first `elapsed` seconds."""
        return math.floor(self.integral(elapsed) + 1e-9)

    def burst(self, elapsed: float) -> float:
        """Return how many messages may go out at once after a pause in releasing: a tenth
        of a second at the current rate, at least MIN_BURST. Allowance not used within it is
        not saved up, so a drain never goes above its ramp by more than this."""
        return max(MIN_BURST, self.rate(elapsed) * BURST_SECONDS)

    def seconds_for(self, messages: int, elapsed: float) -> float:
        """Return how many more seconds, from `elapsed`, the ramp needs to let out
        `messages` more (an ETA at the ramp's pace)."""
        if messages <= 0:
            return 0.0
        target = self.allowance(elapsed) + messages
        low, high = elapsed, elapsed + 1.0
        while self.allowance(high) < target:
            low, high = high, elapsed + (high - elapsed) * 2
            if high - elapsed > 1e9:
                return math.inf
        for _ in range(50):
            middle = (low + high) / 2
            if self.allowance(middle) >= target:
                high = middle
            else:
                low = middle
        return high - elapsed
