"""Geometry of the overview's bar chart, drawn as SVG on the server (no script, no styles)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.services.stats import Minute

WIDTH = 600  # viewBox units; the SVG stretches to its box (preserveAspectRatio="none")
HEIGHT = 100
HEADROOM = 4  # keeps the tallest bar clear of the top edge
GAP = 2
MIN_HEIGHT = 1.5  # a single attempt in a busy hour still shows


@dataclass(frozen=True)
class Bar:
    """One minute: deliveries stacked from the baseline, failed tries above them."""

    x: float
    width: float
    sent_y: float
    sent_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(frozen=True)
class Chart:
    """A chart of attempts per minute, with totals for its caption."""

    bars: list[Bar]
    peak: int
    sent: int
    failed: int
    width: int = WIDTH
    height: int = HEIGHT


def bar_chart(minutes: Sequence[Minute]) -> Chart:
    """Lay out one stacked bar per minute, scaled to the busiest minute."""
    peak = max((m.sent + m.failed for m in minutes), default=0)
    slot = WIDTH / max(len(minutes), 1)
    scale = (HEIGHT - HEADROOM) / peak if peak else 0.0
    bars = []
    for index, minute in enumerate(minutes):
        sent_height = _visible(minute.sent * scale)
        failed_height = _visible(minute.failed * scale)
        sent_y = HEIGHT - sent_height
        bars.append(
            Bar(
                x=round(index * slot + GAP / 2, 2),
                width=round(slot - GAP, 2),
                sent_y=round(sent_y, 2),
                sent_height=round(sent_height, 2),
                failed_y=round(sent_y - failed_height, 2),
                failed_height=round(failed_height, 2),
                title=f"{minute.start:%H:%M} UTC: {minute.sent} sent, {minute.failed} failed",
            )
        )
    return Chart(
        bars=bars,
        peak=peak,
        sent=sum(m.sent for m in minutes),
        failed=sum(m.failed for m in minutes),
    )


def _visible(height: float) -> float:
    return max(height, MIN_HEIGHT) if height > 0 else 0.0
