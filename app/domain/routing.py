"""Choose the order in which relays are tried for a message (DESIGN.md, "Routing")."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RelayChoice:
    """What routing needs to know of a relay."""

    id: int
    name: str
    priority: int
    weight: int = 1
    enabled: bool = True
    healthy: bool = True


def failover_order(relays: Sequence[RelayChoice]) -> list[RelayChoice]:
    """Return the enabled relays in priority order (lower number first, then name)."""
    return sorted((r for r in relays if r.enabled), key=lambda r: (r.priority, r.name))


def load_balance_order(
    relays: Sequence[RelayChoice], rng: random.Random | None = None
) -> list[RelayChoice]:
    """Order healthy relays by weighted random choice, then the rest as fallbacks."""
    rng = rng or random.Random()
    ordered = failover_order(relays)
    pool = [r for r in ordered if r.healthy and r.weight > 0]
    rest = [r for r in ordered if r not in pool]
    chosen: list[RelayChoice] = []
    while pool:
        total = sum(r.weight for r in pool)
        roll = rng.uniform(0, total)
        upto = 0.0
        for relay in pool:
            upto += relay.weight
            if roll <= upto:
                break
        chosen.append(relay)
        pool.remove(relay)
    return chosen + rest
