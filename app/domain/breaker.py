"""The per-relay circuit breaker as a pure state machine (DESIGN.md, "Circuit breaker")."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum


class CircuitState(StrEnum):
    """The three states of a circuit."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """How many failures open a circuit, for how long, and how many successes close it."""

    failure_threshold: int = 3
    open_seconds: float = 1800.0
    success_threshold: int = 1


@dataclass(frozen=True)
class Circuit:
    """A relay's circuit: its state and counters."""

    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    successes: int = 0
    open_until: datetime | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Transition:
    """A change of circuit state, with its reason."""

    before: CircuitState
    after: CircuitState
    reason: str


def _move(circuit: Circuit, new: Circuit, reason: str) -> tuple[Circuit, Transition | None]:
    if new.state == circuit.state:
        return new, None
    return new, Transition(circuit.state, new.state, reason)


def _open(policy: BreakerPolicy, now: datetime, reason: str) -> Circuit:
    return Circuit(
        state=CircuitState.OPEN,
        failures=0,
        successes=0,
        open_until=now + timedelta(seconds=policy.open_seconds),
        reason=reason,
    )


def tick(circuit: Circuit, now: datetime) -> tuple[Circuit, Transition | None]:
    """Half-open an open circuit whose timeout has passed."""
    if circuit.state == CircuitState.OPEN and circuit.open_until and now >= circuit.open_until:
        half = Circuit(state=CircuitState.HALF_OPEN, reason=circuit.reason)
        return _move(circuit, half, "open timeout elapsed; allowing a trial")
    return circuit, None


def allows(circuit: Circuit, now: datetime) -> bool:
    """Say whether a relay may be tried now (an expired open circuit allows a trial)."""
    if circuit.state == CircuitState.OPEN:
        return bool(circuit.open_until and now >= circuit.open_until)
    return True


def record_success(
    policy: BreakerPolicy, circuit: Circuit, now: datetime
) -> tuple[Circuit, Transition | None]:
    """Count a success: reset failures, and close a half-open circuit after enough of them."""
    circuit, first = tick(circuit, now)
    if circuit.state == CircuitState.CLOSED:
        if circuit.failures == 0 and circuit.reason is None:
            return circuit, first  # the common case: nothing to change
        return replace(circuit, failures=0, reason=None), first
    if circuit.state == CircuitState.HALF_OPEN:
        successes = circuit.successes + 1
        if successes >= policy.success_threshold:
            return _move(circuit, Circuit(), f"{successes} successful trial(s)")
        return replace(circuit, successes=successes), first
    return circuit, first  # a late success while open changes nothing


def record_failure(
    policy: BreakerPolicy, circuit: Circuit, now: datetime, reason: str, *, force_open: bool = False
) -> tuple[Circuit, Transition | None]:
    """Count a server-level failure; open the circuit at the threshold, in half-open, or forced."""
    circuit, _ = tick(circuit, now)
    if circuit.state == CircuitState.OPEN:
        return circuit, None
    if force_open or circuit.state == CircuitState.HALF_OPEN:
        return _move(circuit, _open(policy, now, reason), reason)
    failures = circuit.failures + 1
    if failures >= policy.failure_threshold:
        return _move(
            circuit, _open(policy, now, reason), f"{failures} consecutive failures; last: {reason}"
        )
    return replace(circuit, failures=failures, reason=reason), None


def record_probe_success(circuit: Circuit, now: datetime) -> tuple[Circuit, Transition | None]:
    """Let a good health probe move an open circuit to half-open early; never close it."""
    if circuit.state == CircuitState.OPEN:
        half = Circuit(state=CircuitState.HALF_OPEN, reason=circuit.reason)
        return _move(circuit, half, "health probe succeeded; allowing a trial")
    return circuit, None


def force(
    policy: BreakerPolicy, circuit: Circuit, now: datetime, state: CircuitState, note: str
) -> tuple[Circuit, Transition | None]:
    """Set a circuit by an operator's hand, with a note."""
    if state == CircuitState.OPEN:
        return _move(circuit, _open(policy, now, note), note)
    if state == CircuitState.CLOSED:
        return _move(circuit, Circuit(), note)
    return _move(circuit, Circuit(state=CircuitState.HALF_OPEN, reason=note), note)
