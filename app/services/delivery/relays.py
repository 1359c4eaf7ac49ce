"""One relay during a pass: its snapshot, live circuit, session pool, pacing, unsaved changes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from app import logs
from app.domain import breaker
from app.domain.breaker import Circuit, CircuitState, Transition
from app.domain.judge import Judgement, Lesson
from app.services import circuits
from app.services.records import EventRecord
from app.services.relays import RelaySnapshot
from app.transport.pool import RelayPool

log = logs.get("delivery")

THROTTLE_COOLDOWN_SECONDS = 60.0


@dataclass(frozen=True)
class RelayChange:
    """What a pass changed on a relay, to be written if nobody else changed its circuit."""

    relay_id: int
    expected_changed_at: datetime | None
    circuit: Circuit
    cooldown_until: datetime | None
    results: dict[str, Any]  # last_error, last_error_at, last_success_at, last_duration_ms
    events: tuple[EventRecord, ...]
    changed_at: datetime  # the circuit's new version, when there are events
    maintenance: tuple[datetime, str] | None = None  # entered, from its reply: when, why


@dataclass
class RelayState:
    """A relay as one pass knows it; only the pass's event loop touches it."""

    snap: RelaySnapshot
    pool: RelayPool
    circuit: Circuit
    cooldown_until: datetime | None
    trial_in_flight: bool = False
    next_slot: float = 0.0  # time.monotonic() of the next send its max_rate allows
    dirty: bool = False
    results: dict[str, Any] = field(default_factory=dict)
    transitions: list[tuple[datetime, Transition]] = field(default_factory=list)
    entered_maintenance: tuple[datetime, str] | None = None

    # What routing reads (app.domain.routing.Routable).
    @property
    def id(self) -> int:
        return self.snap.endpoint.id

    @property
    def name(self) -> str:
        return self.snap.endpoint.name

    @property
    def priority(self) -> int:
        return self.snap.priority

    @property
    def weight(self) -> int:
        return self.snap.weight

    @property
    def enabled(self) -> bool:
        return self.snap.enabled

    @property
    def unusable(self) -> str | None:
        return self.snap.unusable

    @property
    def down(self) -> str | None:
        return self.pool.down

    @property
    def maintenance(self) -> str | None:
        return self.snap.maintenance

    @property
    def maintenance_policy(self) -> str:
        return self.snap.maintenance_policy

    @property
    def test_mode(self) -> bool:
        """Say whether this relay only logs mail (the operator's test mode)."""
        return self.snap.provider == "log"

    def enter_maintenance(self, reason: str, now: datetime) -> None:
        """Take the relay's own word that it is in maintenance, for this pass and after."""
        if self.snap.maintenance:
            return
        self.snap = replace(
            self.snap, maintenance=f"since {now:%Y-%m-%d %H:%M} UTC, by its reply: {reason}"
        )
        self.entered_maintenance = (now, reason)
        self.dirty = True
        self.pool.refuse_waiters(f"in maintenance: {reason}")

    def tick(self, now: datetime) -> None:
        """Half-open the circuit if its open timeout has passed."""
        self._adopt_circuit(*breaker.tick(self.circuit, now), now)

    def learn(self, judgement: Judgement, now: datetime, duration_ms: float) -> None:
        """Feed an attempt's lesson to the circuit, and note the relay's last results."""
        self.results["last_duration_ms"] = duration_ms
        self.dirty = True
        lesson = judgement.lesson
        if lesson == Lesson.SUCCESS:
            self.results["last_success_at"] = now
            self._adopt_circuit(*breaker.record_success(self.snap.policy, self.circuit, now), now)
            return
        if lesson == Lesson.NOTHING:
            return
        self.results["last_error"], self.results["last_error_at"] = judgement.reason, now
        if lesson == Lesson.THROTTLE:
            self.cooldown_until = now + timedelta(seconds=THROTTLE_COOLDOWN_SECONDS)
            self.pool.refuse_waiters(
                f"cooling down after throttling until {self.cooldown_until:%H:%M:%S}"
            )
            return
        circuit, transition = breaker.record_failure(
            self.snap.policy,
            self.circuit,
            now,
            judgement.reason,
            force_open=lesson == Lesson.AUTH_FAILURE,
        )
        self._adopt_circuit(circuit, transition, now)
        if circuit.state == CircuitState.OPEN:
            self.pool.refuse_waiters(f"circuit opened: {circuit.reason}")

    def _adopt_circuit(
        self, circuit: Circuit, transition: Transition | None, now: datetime
    ) -> None:
        if circuit != self.circuit:
            self.circuit = circuit
            self.dirty = True
        if transition:
            self.transitions.append((now, transition))
            log.warning(
                "circuit " + transition.after.value.replace("_", "-"),
                extra={
                    "relay": self.name,
                    "from": transition.before.value,
                    "to": transition.after.value,
                    "reason": transition.reason,
                },
            )

    def adopt(self, fresh: RelaySnapshot, now: datetime) -> bool:
        """Take an operator's changes read mid-pass; say whether the route must be computed again.

        A circuit is adopted only when the database's change is newer than the last one
        this pass knows, so a stale read never undoes a transition made here; when it is,
        theirs (an operator's, another instance's) wins over this pass's unsaved view.
        """
        known = self.snap.circuit_changed_at
        newer = fresh.circuit_changed_at is not None and (
            known is None or fresh.circuit_changed_at > known
        )
        reroute = (fresh.priority, fresh.enabled, fresh.weight, fresh.unusable) != (
            self.priority,
            self.enabled,
            self.weight,
            self.unusable,
        )
        if fresh.maintenance and not self.maintenance:
            self.pool.refuse_waiters(f"in maintenance {fresh.maintenance}")
        mine = self.snap.maintenance if self.entered_maintenance else None  # not yet written
        self.snap = replace(
            fresh,
            circuit_changed_at=fresh.circuit_changed_at if newer else known,
            maintenance=fresh.maintenance or mine,
        )
        if newer:
            self.circuit = fresh.circuit
            self.cooldown_until = fresh.cooldown_until
            self.transitions.clear()
            if not breaker.allows(self.circuit, now):
                self.pool.refuse_waiters(f"circuit opened: {self.circuit.reason}")
        return reroute

    def take_change(self, now: datetime) -> RelayChange | None:
        """Hand over what the pass changed since the last call, to be written."""
        if not self.dirty:
            return None
        events = tuple(
            circuits.transition_event(self.id, self.name, transition, at)
            for at, transition in self.transitions
        )
        change = RelayChange(
            relay_id=self.id,
            expected_changed_at=self.snap.circuit_changed_at,
            circuit=self.circuit,
            cooldown_until=self.cooldown_until,
            results=dict(self.results),
            events=events,
            changed_at=now,
            maintenance=self.entered_maintenance,
        )
        self.entered_maintenance = None
        if events:  # the write bumps the version: this pass knows it, so adopts nothing older
            self.snap = replace(self.snap, circuit_changed_at=now)
        self.transitions.clear()
        self.results.clear()
        self.dirty = False
        return change

    async def pace(self) -> None:
        """Wait for this relay's rate limit, if it has one."""
        rate = self.snap.max_rate
        if not rate:
            return
        now = time.monotonic()
        slot = max(now, self.next_slot)
        self.next_slot = slot + 1.0 / rate
        if slot > now:
            await asyncio.sleep(slot - now)
