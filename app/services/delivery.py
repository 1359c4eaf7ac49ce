"""The delivery engine: claim due mail, send it over pooled sessions with failover, record outcomes.

Async stays inside the pass: the database work runs on one worker thread (claims and
records never overlap there), while one event loop sends over reused SMTP sessions.
Claims run ahead of sending so the relays never wait on the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from app import logs, writelock
from app.config import Settings
from app.domain import breaker
from app.domain.breaker import Circuit, CircuitState, Transition
from app.domain.replies import (
    Action,
    Scope,
    Verdict,
    classify_connection_error,
    classify_reply,
    enhanced_status,
)
from app.domain.retry import RetryPolicy
from app.domain.routing import RelayChoice, failover_order, load_balance_order
from app.models import DEFERRED, FAILED, LOGGED, SENT, Event, Relay, utcnow
from app.services import queue
from app.services.relays import RelaySnapshot, snapshot
from app.transport import loop as event_loop
from app.transport.pool import RelayPool, RelayUnavailable
from app.transport.smtp import Endpoint, RelaySession, SendResult, Timeouts, TransportError

log = logs.get("delivery")
T = TypeVar("T")

THROTTLE_COOLDOWN_SECONDS = 60.0
FLUSH_EVERY_SECONDS = 0.05
FLUSH_GIVE_UP_AFTER = 8  # failed writes, once claiming has ended


def worker_id() -> str:
    """Return a name for this process's leases: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class PassReport:
    """What one drain did."""

    claimed: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    logged: int = 0
    failovers: int = 0
    seconds: float = 0.0

    def add(self, outcome: queue.Outcome) -> None:
        """Count one finished message."""
        if outcome.status == SENT:
            self.sent += 1
        elif outcome.status == DEFERRED:
            self.deferred += 1
        elif outcome.status == FAILED:
            self.failed += 1
        elif outcome.status == LOGGED:
            self.logged += 1
        self.failovers += sum(1 for e in outcome.events if e["type"] == "failover")


@dataclass(frozen=True)
class RelayChange:
    """What a pass changed on a relay, to be written if nobody else changed its circuit."""

    relay_id: int
    expected_changed_at: datetime | None
    circuit: dict[str, Any]
    results: dict[str, Any]
    transitions: list[dict[str, Any]]


@dataclass
class RelayState:
    """One relay during a pass: its snapshot, live circuit, session pool and pacing."""

    snap: RelaySnapshot
    pool: RelayPool
    circuit: Circuit
    cooldown_until: datetime | None
    dirty: bool = False
    trial_in_flight: bool = False
    next_slot: float = 0.0
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_success_at: datetime | None = None
    last_duration_ms: float | None = None
    transitions: list[tuple[datetime, Transition]] = field(default_factory=list)

    @property
    def id(self) -> int:
        return self.snap.endpoint.id

    @property
    def name(self) -> str:
        return self.snap.endpoint.name

    def unavailable(self, now: datetime) -> str | None:
        """Say why this relay cannot be tried now, or None when it can."""
        if not self.snap.enabled:
            return "disabled"
        if self.cooldown_until and now < self.cooldown_until:
            return f"cooling down after throttling until {self.cooldown_until:%H:%M:%S}"
        if not breaker.allows(self.circuit, now):
            until = f" until {self.circuit.open_until:%H:%M}" if self.circuit.open_until else ""
            return f"circuit open{until}: {self.circuit.reason}"
        if self.trial_in_flight and self.circuit.state != CircuitState.CLOSED:
            return "circuit half-open: a trial is in flight"
        return None

    def change(self, circuit: Circuit, transition: Transition | None, now: datetime) -> None:
        """Adopt a new circuit value and remember a transition to record."""
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


class DeliveryEngine:
    """Deliver due messages through the relays, in passes."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        owner: str | None = None,
        opener: Callable[[Endpoint, Timeouts], Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.owner = owner or worker_id()
        self.timeouts = Timeouts(
            connect=settings.connect_timeout,
            command=settings.command_timeout,
            deadline=settings.attempt_deadline,
        )
        self.retry = RetryPolicy(settings.retry_base_seconds, settings.retry_max_seconds)
        self.rng = rng or random.Random()
        self._opener = opener or self._open_session

    async def _open_session(self, endpoint: Endpoint, timeouts: Timeouts) -> RelaySession:
        return await RelaySession.open(endpoint, timeouts, ca_file=self.settings.ca_file)

    # -- the pass -----------------------------------------------------------------

    def drain(
        self,
        *,
        stop: threading.Event | None = None,
        progress: Callable[[PassReport], None] | None = None,
        max_messages: int | None = None,
    ) -> PassReport:
        """Deliver everything that is due now, then return what was done."""
        return event_loop.run(
            self._drain(stop or threading.Event(), progress, max_messages),
            self.settings.event_loop,
        )

    async def _drain(
        self,
        stop: threading.Event,
        progress: Callable[[PassReport], None] | None,
        max_messages: int | None,
    ) -> PassReport:
        started = time.perf_counter()
        report = PassReport()
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1, thread_name_prefix="relayboard-db")

        async def on_db(fn: Callable[..., T], *args: Any) -> T:
            return await loop.run_in_executor(executor, fn, *args)

        await on_db(self._reap)
        self.relays = await on_db(self._load_relays)
        self._order: list[RelayState] | None = None
        results: list[queue.Outcome] = []
        flush_wanted = asyncio.Event()
        batch = self.settings.batch_size
        # A fixed crew of senders pulls from a bounded inbox: enough to keep every
        # relay's sessions busy, few enough that waiting on a pool stays cheap.
        enabled = sum(1 for s in self.relays.values() if s.snap.enabled) or 1
        crew = max(1, min(self.settings.sessions_per_relay * enabled, 512))
        inbox: asyncio.Queue[queue.Claimed | None] = asyncio.Queue(maxsize=batch)
        busy = 0
        claiming = True

        lease = self.settings.lease_seconds
        renewed_until = time.monotonic() + lease  # how long our leases surely hold

        async def sender() -> None:
            nonlocal busy
            while (message := await inbox.get()) is not None:
                # A message whose lease may have lapsed (renewals failing) may be another
                # worker's now: leave it to the reaper rather than risk a second copy.
                if max(message.lease_until, renewed_until) - lease * 0.1 < time.monotonic():
                    log.warning("lease at risk; not sending", extra={"mid": message.id})
                    continue
                busy += 1
                try:
                    outcome = await self._deliver(message)
                except Exception as exc:  # a bug must not lose the message: defer it, loudly
                    log.exception("delivery crashed", extra={"mid": message.id})
                    outcome = self._deferred_outcome(
                        message, f"internal error: {exc!r}", [], [], pending=message.recipients
                    )
                results.append(outcome)
                busy -= 1
                if len(results) >= batch:
                    flush_wanted.set()

        async def flusher() -> None:
            nonlocal renewed_until
            failures = 0
            changes: list[RelayChange] = []
            next_renewal = time.monotonic() + lease / 3
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(flush_wanted.wait(), FLUSH_EVERY_SECONDS)
                flush_wanted.clear()
                try:
                    if time.monotonic() >= next_renewal:
                        asked = time.monotonic()
                        await on_db(self._renew_leases)
                        renewed_until = asked + lease
                        next_renewal = asked + lease / 3
                    if results:
                        chunk = results[:]
                        changes += self._relay_changes()
                        await on_db(self._record, chunk, changes)
                        del results[: len(chunk)]
                        changes = []
                        failures = 0
                        for outcome in chunk:
                            report.add(outcome)
                        if progress:
                            progress(report)
                    elif not claiming and busy == 0 and inbox.empty():
                        return
                except Exception:
                    # The outcomes stay in `results` and are written by the next try; the
                    # messages stay leased (renewals retry too) so nobody else sends them.
                    failures += 1
                    log.exception(
                        "could not record outcomes; retrying",
                        extra={"outcomes": len(results), "failures": failures},
                    )
                    if not claiming and failures >= FLUSH_GIVE_UP_AFTER:
                        # Their leases will lapse and the reaper will queue them again:
                        # at-least-once, with the same Message-ID.
                        log.error(
                            "giving up on recording outcomes", extra={"outcomes": len(results)}
                        )
                        return
                    await asyncio.sleep(min(5.0, 0.1 * 2**failures))

        senders = [asyncio.create_task(sender()) for _ in range(crew)]
        flush_task = asyncio.create_task(flusher())
        try:
            while not stop.is_set() and not flush_task.done():
                if max_messages is not None and report.claimed >= max_messages:
                    break
                want = batch if max_messages is None else min(batch, max_messages - report.claimed)
                claimed, fresh = await on_db(self._claim, want)
                self._adopt(fresh)
                if not claimed:
                    if busy == 0 and inbox.empty() and not results:
                        break
                    await asyncio.sleep(FLUSH_EVERY_SECONDS)
                    continue
                report.claimed += len(claimed)
                for message in claimed:
                    await inbox.put(message)  # waits while the inbox is full
        finally:
            for _ in senders:
                await inbox.put(None)
            await asyncio.gather(*senders, return_exceptions=True)
            claiming = False
            flush_wanted.set()
            await flush_task
            await asyncio.gather(*(state.pool.close() for state in self.relays.values()))
            await on_db(self._save_relays, self._relay_changes())
            executor.shutdown(wait=True)
        report.seconds = time.perf_counter() - started
        return report

    # -- database steps (run on the DB thread) -------------------------------------

    def _reap(self) -> None:
        with writelock.transaction(self.engine) as conn:
            queue.reap_expired_leases(conn)

    def _renew_leases(self) -> None:
        with writelock.transaction(self.engine) as conn:
            queue.renew_leases(conn, self.owner, self.settings.lease_seconds)

    def _claim(self, limit: int) -> tuple[list[queue.Claimed], dict[int, RelaySnapshot]]:
        with writelock.transaction(self.engine) as conn:
            claimed = queue.claim(conn, self.owner, limit, self.settings.lease_seconds)
        with Session(self.engine) as session:
            fresh = {
                relay.id: snapshot(relay, self.settings.secret_key)
                for relay in session.scalars(select(Relay))
            }
        return claimed, fresh

    def _load_relays(self) -> dict[int, RelayState]:
        states: dict[int, RelayState] = {}
        with Session(self.engine) as session:
            for relay in session.scalars(select(Relay).order_by(Relay.priority, Relay.name)):
                snap = snapshot(relay, self.settings.secret_key)
                states[relay.id] = RelayState(
                    snap=snap,
                    pool=RelayPool(
                        snap.endpoint,
                        self.timeouts,
                        self.settings.sessions_per_relay,
                        self.settings.connect_patience,
                        self._opener,
                    ),
                    circuit=snap.circuit,
                    cooldown_until=snap.cooldown_until,
                )
        return states

    def _adopt(self, fresh: dict[int, RelaySnapshot]) -> None:
        """Pick up operators' changes (enable, disable, reorder, forced circuits) mid-pass.

        A snapshot may have been read before this pass's own latest write; a circuit is
        adopted only when the database's change is newer than the last one this pass
        knows, so a stale read never undoes a transition made here.
        """
        for relay_id, snap in fresh.items():
            state = self.relays.get(relay_id)
            if state is None:
                continue  # added mid-pass: the next pass uses it
            known = state.snap.circuit_changed_at
            newer = snap.circuit_changed_at is not None and (
                known is None or snap.circuit_changed_at > known
            )
            if (snap.priority, snap.enabled, snap.weight) != (
                state.snap.priority,
                state.snap.enabled,
                state.snap.weight,
            ):
                self._order = None  # reordered, enabled or disabled: route afresh
            state.snap = replace(
                snap, circuit_changed_at=snap.circuit_changed_at if newer else known
            )
            if newer:
                # Someone else (an operator, another instance) changed the circuit: theirs
                # wins over this pass's unsaved view; last results stay ours to write.
                state.circuit = snap.circuit
                state.cooldown_until = snap.cooldown_until
                state.transitions.clear()

    def _relay_changes(self) -> list[RelayChange]:
        """Take the relays' unsaved changes (on the loop's thread) for the DB thread to write."""
        changes = []
        now = utcnow()
        for state in getattr(self, "relays", {}).values():
            if not state.dirty:
                continue
            circuit: dict[str, Any] = {
                "circuit_state": state.circuit.state.value,
                "circuit_failures": state.circuit.failures,
                "circuit_successes": state.circuit.successes,
                "circuit_open_until": state.circuit.open_until,
                "circuit_reason": state.circuit.reason,
                "cooldown_until": state.cooldown_until,
            }
            results = {
                key: getattr(state, key)
                for key in ("last_error", "last_error_at", "last_success_at", "last_duration_ms")
                if getattr(state, key) is not None
            }
            transitions = [
                {
                    "at": at,
                    "type": "circuit_" + t.after.value,
                    "relay_id": state.id,
                    "detail": t.reason,
                    "data": {
                        "relay": state.name,
                        "from": t.before.value,
                        "to": t.after.value,
                        "reason": t.reason,
                    },
                }
                for at, t in state.transitions
            ]
            expected = state.snap.circuit_changed_at
            if transitions:
                circuit["circuit_changed_at"] = now
                state.snap = replace(state.snap, circuit_changed_at=now)
            state.transitions.clear()
            state.dirty = False
            changes.append(RelayChange(state.id, expected, circuit, results, transitions))
        return changes

    def _record(
        self,
        outcomes: list[queue.Outcome],
        changes: list[RelayChange],
    ) -> None:
        with writelock.transaction(self.engine) as conn:
            queue.finish(conn, self.owner, outcomes)
            self._save_relays(changes, conn)
        if not log.isEnabledFor(logging.INFO):
            return
        for outcome in outcomes:
            for attempt in outcome.attempts:
                log.info(
                    "attempt",
                    extra={
                        "mid": attempt["message_id"],
                        "relay": attempt["relay_name"],
                        "outcome": attempt["outcome"],
                        "code": attempt["code"],
                        "enhanced": attempt["enhanced_status"],
                        "duration_ms": attempt["duration_ms"],
                    },
                )
            log.info(
                "message " + outcome.status,
                extra={
                    "mid": outcome.message,
                    "status": outcome.status,
                    "reason": outcome.last_error,
                },
            )

    def _save_relays(self, changes: list[RelayChange], conn: Any = None) -> None:
        """Write changed circuits, their transitions and the relays' last results.

        A circuit is written only if nobody changed it since this pass last knew it (an
        operator forcing it, another instance): theirs stands, and this pass's
        transitions, which no longer happened, are dropped.
        """
        if not changes:
            return
        if conn is None:
            with writelock.transaction(self.engine) as own:
                self._save_relays(changes, own)
            return
        for change in changes:
            unchanged = (
                Relay.circuit_changed_at.is_(None)
                if change.expected_changed_at is None
                else Relay.circuit_changed_at == change.expected_changed_at
            )
            written = conn.execute(
                update(Relay)
                .where(Relay.id == change.relay_id, unchanged)
                .values(**change.circuit, **change.results)
            ).rowcount
            if written:
                if change.transitions:
                    conn.execute(Event.__table__.insert(), change.transitions)
            elif change.results:
                conn.execute(
                    update(Relay).where(Relay.id == change.relay_id).values(**change.results)
                )

    # -- one message ----------------------------------------------------------------

    def _route(self, message: queue.Claimed) -> list[RelayState]:
        if message.pinned_relay_id is not None:
            pinned = self.relays.get(message.pinned_relay_id)
            return [pinned] if pinned else []
        if self.settings.routing == "failover" and self._order is not None:
            return self._order  # priority order changes only when relays do: computed once
        choices = [
            RelayChoice(
                s.id,
                s.name,
                s.snap.priority,
                s.snap.weight,
                s.snap.enabled,
                healthy=s.circuit.state == CircuitState.CLOSED,
            )
            for s in self.relays.values()
        ]
        if self.settings.routing == "load_balance":
            return [self.relays[c.id] for c in load_balance_order(choices, self.rng)]
        self._order = [self.relays[c.id] for c in failover_order(choices)]
        return self._order

    async def _deliver(self, message: queue.Claimed) -> queue.Outcome:
        """Try the recipients through the relays in order, failing over within the pass."""
        attempts: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        to_try = list(message.recipients)
        delivered: list[str] = []
        rejected: dict[str, str] = {}
        deferred: dict[str, str] = {}
        skipped: list[str] = []
        previous: RelayState | None = None
        reason = ""
        sent_via: RelayState | None = None
        route = self._route(message)
        for index, state in enumerate(route):
            if not to_try:
                break
            now = utcnow()
            why_not = None if message.pinned_relay_id else state.unavailable(now)
            if why_not:
                skipped.append(f"{state.name}: {why_not}")
                continue
            if previous is not None:
                events.append(self._failover_event(message, previous, state, reason))
            if state.snap.provider == "log":
                return self._logged(message, state, to_try, delivered, attempts, events)
            last_resort = functools.partial(self._last_resort, route, index)
            verdicts = await self._try_relay(state, message, to_try, attempts, last_resort)
            to_try = []
            for recipient, verdict in verdicts.items():
                if verdict.action == Action.DELIVERED:
                    delivered.append(recipient)
                    sent_via = state
                elif verdict.action == Action.REJECT:
                    rejected[recipient] = verdict.reason
                elif verdict.fails_over:
                    to_try.append(recipient)
                    reason = verdict.reason
                else:  # RETRY, UNKNOWN: wait and try again later
                    deferred[recipient] = verdict.reason
            previous = state
        for recipient in to_try:
            deferred[recipient] = reason or "no relay available"
        if not deferred and not delivered and not rejected:
            why = "; ".join(skipped) if skipped else "no relay is configured"
            deferred = {r: f"no relay available ({why})" for r in message.recipients}
        for recipient, why in rejected.items():
            events.append(
                self._event(
                    message,
                    "recipient_failed",
                    f"{recipient}: {why}",
                    {"recipient": recipient, "reason": why},
                )
            )
        outcome = self._conclude(message, delivered, rejected, deferred, sent_via, attempts, events)
        for event in events:
            if event["type"] == "failover":
                event["data"]["outcome"] = outcome.status
        return outcome

    def _logged(
        self,
        message: queue.Claimed,
        state: RelayState,
        recipients: list[str],
        delivered: list[str],
        attempts: list[dict[str, Any]],
        events: list[dict[str, Any]],
    ) -> queue.Outcome:
        """Log the message instead of sending it: the relay is the operator's test mode."""
        detail = f"test mode: {len(recipients)} recipient(s) logged by {state.name}, not sent" + (
            f" ({len(delivered)} already delivered)" if delivered else ""
        )
        attempts.append(
            {
                "message_id": message.id,
                "relay_id": state.id,
                "relay_name": state.name,
                "at": utcnow(),
                "outcome": "logged",
                "stage": None,
                "code": None,
                "enhanced_status": None,
                "response": detail,
                "recipients": None,
                "duration_ms": 0.0,
            }
        )
        events.append(self._event(message, "logged", detail, None, state))
        for event in events:
            if event["type"] == "failover":
                event["data"]["outcome"] = LOGGED
        return queue.Outcome(
            message=message.id, status=LOGGED, relay_id=state.id, attempts=attempts, events=events
        )

    def _conclude(
        self,
        message: queue.Claimed,
        delivered: list[str],
        rejected: dict[str, str],
        deferred: dict[str, str],
        sent_via: RelayState | None,
        attempts: list[dict[str, Any]],
        events: list[dict[str, Any]],
    ) -> queue.Outcome:
        """Turn per-recipient results into the message's new status."""
        now = utcnow()
        if deferred:
            return self._deferred_outcome(
                message,
                next(iter(deferred.values())),
                attempts,
                events,
                pending=list(deferred),
                partial=delivered,
            )
        if delivered:
            via = sent_via.name if sent_via else "?"
            detail = f"delivered to {len(delivered)} recipient(s) via {via}"
            if rejected:
                detail += f"; {len(rejected)} recipient(s) failed permanently"
            events.append(self._event(message, "sent", detail, None, sent_via))
            return queue.Outcome(
                message=message.id,
                status=SENT,
                sent_at=now,
                attempts=attempts,
                events=events,
                relay_id=sent_via.id if sent_via else None,
                last_error=None if not rejected else next(iter(rejected.values())),
            )
        error = next(iter(rejected.values()))
        events.append(self._event(message, "failed", error))
        return queue.Outcome(
            message=message.id, status=FAILED, last_error=error, attempts=attempts, events=events
        )

    def _deferred_outcome(
        self,
        message: queue.Claimed,
        reason: str,
        attempts: list[dict[str, Any]],
        events: list[dict[str, Any]],
        *,
        pending: list[str] | None = None,
        partial: list[str] | None = None,
    ) -> queue.Outcome:
        """Defer with backoff, or fail a message that has been trying for too long."""
        now = utcnow()
        # The recipients still owed. Kept even when they are all of this pass's recipients:
        # after an earlier partial delivery those are fewer than the message's.
        pending_list = list(pending) if pending else None
        age = (now - message.created_at).total_seconds()
        retry_at: datetime | None = None
        if age >= self.settings.max_age_seconds:
            hours, limit = age / 3600, self.settings.max_age_seconds / 3600
            status = FAILED
            error = (
                f"gave up after {message.attempt_count} attempt(s) over {hours:.1f} h "
                f"(maximum age {limit:.1f} h); last error: {reason}"
            )
            events.append(self._event(message, "failed", error))
        else:
            status, error = DEFERRED, reason
            delay = self.retry.delay(message.attempt_count, self.rng)
            retry_at = now + timedelta(seconds=delay)
            detail = f"retry at {retry_at:%Y-%m-%d %H:%M:%S} UTC (in {delay:.0f} s): {reason}"
            if partial:
                detail = f"delivered to {len(partial)}, {len(pending or [])} left; " + detail
            data = {"retry_at": retry_at.isoformat(), "reason": reason}
            events.append(self._event(message, "deferred", detail, data))
        return queue.Outcome(
            message=message.id,
            status=status,
            next_attempt_at=retry_at,
            last_error=error,
            attempts=attempts,
            events=events,
            pending_recipients=pending_list,
        )

    @staticmethod
    def _last_resort(route: list[RelayState], index: int) -> bool:
        """Whether no relay after route[index] could take the message now.

        A pinned message's route is its relay alone: for it, there never is one.
        """
        now = utcnow()
        return all(s.pool.down or s.unavailable(now) for s in route[index + 1 :])

    async def _try_relay(
        self,
        state: RelayState,
        message: queue.Claimed,
        recipients: list[str],
        attempts: list[dict[str, Any]],
        last_resort: Callable[[], bool] | None = None,
    ) -> dict[str, Verdict]:
        """Send through one relay; return a verdict per recipient and update the circuit.

        `last_resort` says whether another relay could still take the message: when
        none can, waiting for a slow first attempt beats deferring the message.
        """
        started = time.perf_counter()
        now = utcnow()
        state.change(*breaker.tick(state.circuit, now), now)
        trial = state.circuit.state != CircuitState.CLOSED
        if trial:
            state.trial_in_flight = True
        try:
            try:
                session = await state.pool.acquire(
                    admit=lambda: self._admit(state), last_resort=last_resort
                )
            except RelayUnavailable as exc:
                verdict = Verdict(Action.FAILOVER, Scope.SERVER, exc.reason)
                return dict.fromkeys(recipients, verdict)
            except TransportError as exc:
                return self._transport_failure(state, message, recipients, attempts, started, exc)
            healthy: bool | None = None
            try:
                await state.pace()
                async with asyncio.timeout(self.timeouts.deadline):
                    result = await session.send(message.envelope_from, recipients, message.data)
            except TransportError as exc:
                verdicts = self._transport_failure(
                    state, message, recipients, attempts, started, exc
                )
                healthy = False if next(iter(verdicts.values())).breaker_failure else None
                return verdicts
            except TimeoutError:
                session.broken = True
                detail = f"no answer within the attempt deadline of {self.timeouts.deadline:g} s"
                # After the final dot the message may be at the relay: unknown, not a failure.
                kind = "lost_after_data" if session.stage == "data" else "timeout"
                healthy = None if kind == "lost_after_data" else False
                return self._transport_failure(
                    state,
                    message,
                    recipients,
                    attempts,
                    started,
                    TransportError(kind, session.stage, detail),
                )
            else:
                verdicts = self._judge(state, message, recipients, result, attempts, started)
                actions = {v.action for v in verdicts.values()}
                if Action.DELIVERED in actions:
                    healthy = True
                elif any(
                    v.breaker_failure or v.action == Action.THROTTLED for v in verdicts.values()
                ):
                    healthy = False
                elif Action.REJECT in actions:
                    healthy = True  # it answered for each recipient: working, if not for them
                return verdicts
            finally:
                await state.pool.release(session, healthy=healthy)
        finally:
            if trial:
                state.trial_in_flight = False

    def _transport_failure(
        self,
        state: RelayState,
        message: queue.Claimed,
        recipients: list[str],
        attempts: list[dict[str, Any]],
        started: float,
        exc: TransportError,
    ) -> dict[str, Verdict]:
        """Record a session that failed (to open, or under a transaction) as one attempt."""
        verdict = self._verdict_for(exc)
        self._note_attempt(
            state,
            message,
            recipients,
            attempts,
            started,
            verdict,
            stage=exc.stage,
            code=exc.code,
            text=exc.text or exc.detail,
        )
        return dict.fromkeys(recipients, verdict)

    @staticmethod
    def _admit(state: RelayState) -> str | None:
        """Refuse a waiting message if the relay's circuit opened or it throttled meanwhile."""
        now = utcnow()
        if state.cooldown_until and now < state.cooldown_until:
            return f"cooling down after throttling until {state.cooldown_until:%H:%M:%S}"
        if breaker.allows(state.circuit, now):
            return None
        return f"circuit opened: {state.circuit.reason}"

    @staticmethod
    def _verdict_for(exc: TransportError) -> Verdict:
        if exc.kind in ("reply", "auth") and exc.code:
            return classify_reply(exc.code, exc.text, stage=exc.stage)
        return classify_connection_error(exc.kind, exc.detail)

    def _judge(
        self,
        state: RelayState,
        message: queue.Claimed,
        recipients: list[str],
        result: SendResult,
        attempts: list[dict[str, Any]],
        started: float,
    ) -> dict[str, Verdict]:
        overall = classify_reply(result.code, result.text, stage=result.stage)
        verdicts: dict[str, Verdict] = {}
        for recipient in recipients:
            if recipient in result.refused:
                code, text = result.refused[recipient]
                verdicts[recipient] = classify_reply(code, text, stage="rcpt")
            else:
                verdicts[recipient] = overall
        self._note_attempt(
            state,
            message,
            recipients,
            attempts,
            started,
            overall,
            stage=result.stage,
            code=result.code,
            text=result.text,
            refused=result.refused,
            verdicts=verdicts,
        )
        return verdicts

    def _note_attempt(
        self,
        state: RelayState,
        message: queue.Claimed,
        recipients: list[str],
        attempts: list[dict[str, Any]],
        started: float,
        verdict: Verdict,
        *,
        stage: str,
        code: int | None,
        text: str,
        refused: dict[str, tuple[int, str]] | None = None,
        verdicts: dict[str, Verdict] | None = None,
    ) -> None:
        """Record an attempt and feed its result to the relay's circuit."""
        now = utcnow()
        duration = round((time.perf_counter() - started) * 1000, 2)
        actions = {v.action for v in (verdicts or {}).values()} or {verdict.action}
        # The relay is judged on every recipient's verdict, whatever their order: a server
        # refusal anywhere counts, a mailbox refusal never does.
        for candidate in (verdicts or {}).values():
            if candidate.breaker_failure or (
                candidate.action == Action.THROTTLED and not verdict.breaker_failure
            ):
                verdict = candidate
                if candidate.breaker_failure:
                    break
        if Action.DELIVERED in actions:
            outcome = "sent" if len(actions) == 1 else "partial"
        elif verdict.fails_over:
            outcome = "failover"
        elif verdict.action == Action.REJECT:
            outcome = "rejected"
        elif verdict.action == Action.UNKNOWN:
            outcome = "unknown"
        else:
            outcome = "deferred"
        attempts.append(
            {
                "message_id": message.id,
                "relay_id": state.id,
                "relay_name": state.name,
                "at": now,
                "outcome": outcome,
                "stage": stage,
                "code": code,
                "enhanced_status": enhanced_status(text or ""),
                "response": (text or "")[:1000],
                "recipients": (
                    {r: f"{c} {t}" for r, (c, t) in refused.items()} if refused else None
                ),
                "duration_ms": duration,
            }
        )
        state.last_duration_ms = duration
        policy = state.snap.policy
        if Action.DELIVERED in actions:
            state.last_success_at = now
            state.dirty = True
            state.change(*breaker.record_success(policy, state.circuit, now), now)
        elif verdict.breaker_failure:
            state.last_error, state.last_error_at = verdict.reason, now
            force = verdict.action == Action.AUTH_FAILED
            state.change(
                *breaker.record_failure(
                    policy, state.circuit, now, verdict.reason, force_open=force
                ),
                now,
            )
            state.dirty = True
        elif verdict.action == Action.THROTTLED:
            state.last_error, state.last_error_at = verdict.reason, now
            state.cooldown_until = now + timedelta(seconds=THROTTLE_COOLDOWN_SECONDS)
            state.dirty = True

    def _failover_event(
        self, message: queue.Claimed, source: RelayState, target: RelayState, reason: str
    ) -> dict[str, Any]:
        return self._event(
            message,
            "failover",
            f"{source.name} → {target.name}: {reason}",
            {"from": source.name, "to": target.name, "reason": reason},
            source,
        )

    @staticmethod
    def _event(
        message: queue.Claimed,
        kind: str,
        detail: str,
        data: dict[str, Any] | None = None,
        relay: RelayState | None = None,
    ) -> dict[str, Any]:
        return {
            "at": utcnow(),
            "type": kind,
            "message_id": message.id,
            "relay_id": relay.id if relay else None,
            "detail": detail,
            "data": data,
        }
