"""Decide the route of a message: the relays to try in order, why one is skipped, and
whether it is the last resort (DESIGN.md, "Routing").

Modes: `failover` tries enabled relays in priority order; `load_balance` picks among
those whose circuits are closed by weight, then the rest in priority order. A message
pinned to a relay (an operator's test email) goes through that relay alone, enabled or
not: testing a relay before enabling it is the point.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from app.domain import breaker
from app.domain.breaker import Circuit, CircuitState

FAILOVER, LOAD_BALANCE = "failover", "load_balance"
MODES = (FAILOVER, LOAD_BALANCE)


class Routable(Protocol):
    """What routing needs to know of a relay at one moment."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def weight(self) -> int: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def unusable(self) -> str | None: ...  # e.g. its password cannot be decrypted
    @property
    def circuit(self) -> Circuit: ...
    @property
    def cooldown_until(self) -> datetime | None: ...
    @property
    def trial_in_flight(self) -> bool: ...  # a half-open circuit's one trial is running
    @property
    def down(self) -> str | None: ...  # why it is down for the rest of this pass
    @property
    def maintenance(self) -> str | None: ...  # why it is in maintenance, while it is
    @property
    def maintenance_policy(self) -> str: ...  # hold | reroute


HOLD, REROUTE = "hold", "reroute"


R = TypeVar("R", bound=Routable)


def order(relays: Sequence[R], mode: str = FAILOVER, rng: random.Random | None = None) -> list[R]:
    """Return the enabled relays in the order a message tries them."""
    ranked = sorted((r for r in relays if r.enabled), key=lambda r: (r.priority, r.name))
    if mode != LOAD_BALANCE:
        return ranked
    rng = rng or random.Random()
    pool = [r for r in ranked if r.circuit.state == CircuitState.CLOSED and r.weight > 0]
    rest = [r for r in ranked if r not in pool]
    chosen: list[R] = []
    while pool:
        roll = rng.uniform(0, sum(r.weight for r in pool))
        upto = 0.0
        for relay in pool:
            upto += relay.weight
            if roll <= upto:
                break
        chosen.append(relay)
        pool.remove(relay)
    return chosen + rest


def route(
    relays: Sequence[R],
    pinned: int | None = None,
    mode: str = FAILOVER,
    rng: random.Random | None = None,
) -> list[R]:
    """Return the relays a message tries, in order: its pinned relay alone, or the order."""
    if pinned is not None:
        return [r for r in relays if r.id == pinned]
    return order(relays, mode, rng)


def skip_reason(relay: Routable, now: datetime, *, pinned: bool = False) -> str | None:
    """Say why a message must not try this relay now, or None when it may."""
    if relay.unusable:
        return f"unusable: {relay.unusable}"
    if relay.maintenance:
        return f"in maintenance {relay.maintenance}"
    if relay.down:
        return f"down for this pass: {relay.down}"
    if not relay.enabled and not pinned:
        return "disabled"
    if relay.cooldown_until and now < relay.cooldown_until:
        return f"cooling down after throttling until {relay.cooldown_until:%H:%M:%S}"
    if not breaker.allows(relay.circuit, now):
        until = f" until {relay.circuit.open_until:%H:%M}" if relay.circuit.open_until else ""
        return f"circuit open{until}: {relay.circuit.reason}"
    if relay.trial_in_flight and relay.circuit.state != CircuitState.CLOSED:
        return "circuit half-open: a trial is in flight"
    return None


def first_choice(route_: Sequence[R], *, pinned: bool = False) -> R | None:
    """Return the relay a message would go to first, maintenance aside: the first one in
    its route that is enabled (or pinned) and usable."""
    for relay in route_:
        if (relay.enabled or pinned) and not relay.unusable:
            return relay
    return None


def holds(relay: Routable | None) -> bool:
    """Say whether mail whose first choice is this relay waits for it: it is in maintenance
    with the `hold` policy."""
    return relay is not None and bool(relay.maintenance) and relay.maintenance_policy == HOLD


def last_resort(route_: Sequence[Routable], index: int, now: datetime) -> bool:
    """Say whether no relay after route_[index] could take the message now.

    Such a message waits out a slow relay rather than be deferred: deferring it would
    only delay it more. A pinned message's route is its relay alone: it never has one.
    """
    return all(skip_reason(relay, now) for relay in route_[index + 1 :])
