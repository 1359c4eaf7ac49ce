"""One claimed message's way through its route in a pass, and how it ends.

`MessageDelivery.run()` walks the route: it skips relays that cannot take mail now
(with the reason), tries the next one with the recipients still owed, and fails over
within the pass when a relay refuses at the server level. Every attempt is judged
(app/domain/judge.py) and recorded; the relay's circuit learns from it. The delivery
keeps its state on itself, so a pass that stops mid-way can still conclude it
(`interrupted()`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.domain import providers, routing
from app.domain.breaker import CircuitState
from app.domain.judge import Judgement, judge, passed_on
from app.domain.replies import (
    Verdict,
    classify_connection_error,
    classify_reply,
    enhanced_status,
    queued_id,
)
from app.domain.retry import RetryPolicy
from app.models import DEFERRED, FAILED, HELD, LOGGED, QUEUED, SENT, utcnow
from app.services.delivery.relays import RelayState
from app.services.queue import Claimed, Outcome
from app.services.records import AttemptRecord, EventRecord
from app.transport.pool import RelayUnavailable
from app.transport.smtp import SendResult, TransportError

STOPPED = "the worker stopped before sending it; back in the queue"


@dataclass(frozen=True)
class Rules:
    """What a pass's deliveries follow: retry backoff, the age limit, the attempt deadline."""

    retry: RetryPolicy
    max_age_seconds: float
    deadline: float
    rng: random.Random


@dataclass(frozen=True)
class _Failover:
    at: datetime
    source: RelayState
    target: RelayState
    reason: str


@dataclass
class _InFlight:
    """The attempt under way, and where it stood if a stop cut it short."""

    relay: RelayState
    recipients: list[str]
    started: float
    stage: str = "waiting"  # waiting for a session, then the session's: connect, mail, rcpt, data


@dataclass
class MessageDelivery:
    """Deliver one claimed message through its route; collect what to record."""

    message: Claimed
    route: Sequence[RelayState]
    rules: Rules
    attempts: list[AttemptRecord] = field(default_factory=list)
    failovers: list[_Failover] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # recipient → why, for good
    retry: dict[str, str] = field(default_factory=dict)  # recipient → why, later
    requeue: set[str] = field(default_factory=set)  # recipients a stop sent back unattempted
    unknown: int = 0  # unknown outcomes of this message, earlier passes' included
    sent_via: RelayState | None = None
    waiting_for: RelayState | None = None  # the relay a deferred message waits for
    in_flight: _InFlight | None = None

    def __post_init__(self) -> None:
        self.unknown = self.message.unknown_outcomes

    # -- the walk ---------------------------------------------------------------------

    async def run(self) -> Outcome:
        """Try the recipients through the relays in order, failing over within the pass.

        Mail whose first choice is a relay in maintenance waits for it (`held`) when the
        relay's policy is `hold`, or when no other relay can take it; otherwise the
        maintenance relay is skipped like any other that cannot take mail now.
        """
        for recipient, why in self.message.suppressed.items():
            self.rejected[recipient] = f"suppressed: {why}"
        if len(self.rejected) == len(self.message.recipients):
            return self._conclude()  # every recipient is suppressed: nothing to send
        pinned = self.message.pinned_relay_id is not None
        first = routing.first_choice(self.route, pinned=pinned)
        if first is not None and (routing.holds(first) or (pinned and first.maintenance)):
            return self._held(first)
        to_try = [r for r in self.message.recipients if r not in self.rejected]
        skipped: list[str] = []
        previous: RelayState | None = None
        reason = ""
        for index, relay in enumerate(self.route):
            if not to_try:
                break
            now = utcnow()
            relay.tick(now)
            why_not = routing.skip_reason(relay, now, pinned=pinned)
            if why_not:
                skipped.append(f"{relay.name}: {why_not}")
                continue
            if previous is not None:
                self.failovers.append(_Failover(now, previous, relay, reason))
            if relay.test_mode:
                return self._logged(relay, to_try)
            wait_out = routing.last_resort(self.route, index, now)
            judgement = await self._attempt(relay, to_try, wait_out)
            if judgement.recycle:  # once, on a fresh session; again, and it waits
                again = await self._attempt(relay, list(judgement.recycle), wait_out)
                self.retry.update(dict.fromkeys(again.recycle, again.reason))
                judgement = again
            if judgement.maintenance:
                relay.enter_maintenance(judgement.reason, utcnow())
                if routing.holds(relay):
                    return self._held(relay)
            to_try = list(judgement.fail_over)
            reason, previous = judgement.reason, relay
        if to_try:  # no relay left to try: wait, saying why
            tried_others = any(a.relay_id != getattr(first, "id", None) for a in self.attempts)
            if first is not None and first.maintenance and not tried_others:
                return self._held(first)  # rerouting found no other relay: wait for it
            why = reason or f"no relay available ({'; '.join(skipped) or 'none is configured'})"
            self.retry.update(dict.fromkeys(to_try, why))
            # Remembered so that the end of that relay's maintenance brings it forward.
            self.waiting_for = first if first is not None and first.maintenance else previous
        return self._conclude()

    def _held(self, relay: RelayState) -> Outcome:
        """Hold the recipients still owed until the relay's maintenance ends."""
        now = utcnow()
        why = f"held for {relay.name}, in maintenance {relay.maintenance}"
        events = self._rejections(now)
        events.append(self._event(now, "held", why, {"relay": relay.name}, relay=relay))
        done = {*self.delivered, *self.rejected}
        owed = [r for r in self.message.recipients if r not in done]
        return self._outcome(
            HELD,
            events,
            pending=owed,
            last_error=why,
            waiting_for=relay,
            attempted=bool(self.attempts),  # else the claim's count of an attempt is taken back
        )

    async def _attempt(self, relay: RelayState, recipients: list[str], wait_out: bool) -> Judgement:
        """Send through one relay; judge, record and learn from what it answered."""
        started = time.perf_counter()
        trial = relay.circuit.state != CircuitState.CLOSED
        if trial:
            relay.trial_in_flight = True  # routing sends no other message while it runs
        flight = self.in_flight = _InFlight(relay, recipients, started)
        try:
            try:
                session = await relay.pool.acquire(wait_out=wait_out)
            except RelayUnavailable as exc:
                self.in_flight = None
                return self._apply(passed_on(recipients, exc.reason))
            except TransportError as exc:
                self.in_flight = None
                return self._failed(relay, recipients, started, exc)
            judgement: Judgement | None = None
            carried = session.sent  # messages this session carried before this one
            try:
                await relay.pace()
                async with asyncio.timeout(self.rules.deadline):
                    result = await session.send(
                        self.message.envelope_from, recipients, self.message.data
                    )
            except TransportError as exc:
                judgement = self._failed(relay, recipients, started, exc, carried)
            except TimeoutError:
                session.broken = True
                # After the final dot the message may be at the relay: unknown, not a failure.
                kind = "lost_after_data" if session.stage == "data" else "timeout"
                detail = f"no answer within the attempt deadline of {self.rules.deadline:g} s"
                error = TransportError(kind, session.stage, detail)
                judgement = self._failed(relay, recipients, started, error)
            except asyncio.CancelledError:
                flight.stage = session.stage  # interrupted() reads where it stood
                raise
            else:
                judgement = self._replied(relay, recipients, started, result, carried)
            finally:
                if judgement is not None:
                    self.in_flight = None  # recorded: nothing left for interrupted()
                    if judgement.recycle:
                        session.broken = True  # the provider wants a fresh connection
                await relay.pool.release(session, proved=judgement.proved if judgement else None)
            return judgement
        finally:
            if trial:
                relay.trial_in_flight = False

    # -- recording an attempt ---------------------------------------------------------

    def _failed(
        self,
        relay: RelayState,
        recipients: list[str],
        started: float,
        exc: TransportError,
        carried: int = 0,
    ) -> Judgement:
        """Record a session that failed (to open, or under a transaction) as one attempt."""
        if exc.kind in ("reply", "auth") and exc.code:
            meaning = providers.reply_meaning(relay.snap.provider, exc.code, exc.text, carried)
            verdict = classify_reply(exc.code, exc.text, stage=exc.stage, meaning=meaning)
        else:
            verdict = classify_connection_error(exc.kind, exc.detail)
        verdicts = dict.fromkeys(recipients, verdict)
        text = exc.text or exc.detail
        return self._record(relay, verdicts, verdict, started, exc.stage, exc.code, text)

    def _replied(
        self,
        relay: RelayState,
        recipients: list[str],
        started: float,
        result: SendResult,
        carried: int = 0,
    ) -> Judgement:
        """Record a transaction the relay answered, judged per recipient."""
        meaning = providers.reply_meaning(relay.snap.provider, result.code, result.text, carried)
        overall = classify_reply(result.code, result.text, stage=result.stage, meaning=meaning)
        verdicts = {
            r: classify_reply(*result.refused[r], stage="rcpt") if r in result.refused else overall
            for r in recipients
        }
        refused = {r: f"{code} {text}" for r, (code, text) in result.refused.items()} or None
        return self._record(
            relay, verdicts, overall, started, result.stage, result.code, result.text, refused
        )

    def _record(
        self,
        relay: RelayState,
        verdicts: dict[str, Verdict],
        overall: Verdict,
        started: float,
        stage: str,
        code: int | None,
        text: str,
        refused: dict[str, str] | None = None,
    ) -> Judgement:
        """Judge an attempt, record it, teach the relay, and place its recipients."""
        judgement = judge(verdicts, overall)
        now = utcnow()
        duration = round((time.perf_counter() - started) * 1000, 2)
        self.attempts.append(
            AttemptRecord(
                message_id=self.message.id,
                relay_id=relay.id,
                relay_name=relay.name,
                at=now,
                outcome=judgement.outcome,
                stage=stage,
                code=code,
                enhanced_status=enhanced_status(text or ""),
                response=(text or "")[:1000],
                recipients=refused,
                duration_ms=duration,
                esp_id=queued_id(text) if judgement.delivered else None,
            )
        )
        relay.learn(judgement, now, duration)
        return self._apply(judgement, relay)

    def _apply(self, judgement: Judgement, relay: RelayState | None = None) -> Judgement:
        """Place the recipients: delivered, rejected for good, or retried later.

        A reply lost after the final dot is retried with the same Message-ID, at most the
        relay's `unknown_retries` times: after that the message may well be there, and
        sending it again and again would only multiply the copies.
        """
        if judgement.delivered:
            self.delivered += judgement.delivered
            self.sent_via = relay
        self.rejected.update(judgement.rejected)
        self.retry.update(judgement.retry)
        if judgement.unknown and relay is not None:
            self.unknown += 1
            if self.unknown > relay.snap.unknown_retries:
                why = (
                    f"outcome unknown: no answer after the final dot in {self.unknown} "
                    f"attempt(s), the last through {relay.name}; the relay may have delivered "
                    "it, so it is not sent again"
                )
                for recipient in judgement.unknown:
                    del self.retry[recipient]
                    self.rejected[recipient] = why
        return judgement

    # -- how it ends ------------------------------------------------------------------

    def interrupted(self) -> Outcome | None:
        """Conclude a delivery a stop cut short; None when nothing was attempted (release it).

        An attempt cut in DATA may have reached the relay: it is an unknown outcome,
        retried later with the same Message-ID. One cut before DATA sent nothing: its
        recipients go back to the queue.
        """
        flight, self.in_flight = self.in_flight, None
        if flight is not None:
            if flight.stage == "data":
                error = TransportError(
                    "lost_after_data", "data", "the worker stopped before the relay answered"
                )
                self._failed(flight.relay, flight.recipients, flight.started, error)
            else:
                self.requeue.update(flight.recipients)
                self.retry.update(dict.fromkeys(flight.recipients, STOPPED))
        if not self.attempts and not self.delivered:
            return None
        return self._conclude()

    def crashed(self, error: str) -> Outcome:
        """Conclude a delivery a bug cut short: defer every recipient not yet placed."""
        self.in_flight = None
        owed = [r for r in self.message.recipients if r not in self.delivered + [*self.rejected]]
        self.retry = dict.fromkeys(owed, f"internal error: {error}")
        return self._conclude()

    def _conclude(self) -> Outcome:
        """Turn where the recipients stand into the message's new status and its events."""
        now = utcnow()
        events = self._rejections(now)
        if self.retry:
            outcome = self._deferred(now, events)
        elif self.delivered:
            via = self.sent_via.name if self.sent_via else "?"
            detail = f"delivered to {len(self.delivered)} recipient(s) via {via}"
            if self.rejected:
                detail += f"; {len(self.rejected)} recipient(s) failed permanently"
            events.append(self._event(now, "sent", detail, relay=self.sent_via))
            outcome = self._outcome(
                SENT,
                events,
                sent_at=now,
                relay_id=self.sent_via.id if self.sent_via else None,
                last_error=next(iter(self.rejected.values()), None),
            )
        else:
            error = next(iter(self.rejected.values()))
            events.append(self._event(now, "failed", error))
            outcome = self._outcome(FAILED, events, last_error=error)
        return outcome

    def _rejections(self, now: datetime) -> list[EventRecord]:
        """Return an event for each recipient rejected for good."""
        return [
            self._event(now, "recipient_failed", f"{r}: {why}", {"recipient": r, "reason": why})
            for r, why in self.rejected.items()
        ]

    def _deferred(self, now: datetime, events: list[EventRecord]) -> Outcome:
        """Defer with backoff, requeue what a stop sent back, or fail a message too old to try."""
        message = self.message
        reason = next(iter(self.retry.values()))
        # The recipients still owed. Kept even when they are all of this pass's recipients:
        # after an earlier partial delivery those are fewer than the message's.
        pending = list(self.retry)
        if self.requeue.issuperset(pending):
            events.append(self._event(now, "released", STOPPED))
            return self._outcome(QUEUED, events, next_attempt_at=now, pending=pending)
        age = (now - message.created_at).total_seconds()
        if age >= self.rules.max_age_seconds:
            hours, limit = age / 3600, self.rules.max_age_seconds / 3600
            error = (
                f"gave up after {message.attempt_count} attempt(s) over {hours:.1f} h "
                f"(maximum age {limit:.1f} h); last error: {reason}"
            )
            events.append(self._event(now, "failed", error))
            return self._outcome(FAILED, events, last_error=error, pending=pending)
        delay = self.rules.retry.delay(message.attempt_count, self.rules.rng)
        retry_at = now + timedelta(seconds=delay)
        detail = f"retry at {retry_at:%Y-%m-%d %H:%M:%S} UTC (in {delay:.0f} s): {reason}"
        if self.delivered:
            detail = f"delivered to {len(self.delivered)}, {len(pending)} left; " + detail
        data = {"retry_at": retry_at.isoformat(), "reason": reason}
        events.append(self._event(now, "deferred", detail, data))
        return self._outcome(
            DEFERRED,
            events,
            next_attempt_at=retry_at,
            last_error=reason,
            pending=pending,
            waiting_for=self.waiting_for,
        )

    def _logged(self, relay: RelayState, recipients: list[str]) -> Outcome:
        """Log the message instead of sending it: the relay is the operator's test mode."""
        now = utcnow()
        detail = f"test mode: {len(recipients)} recipient(s) logged by {relay.name}, not sent" + (
            f" ({len(self.delivered)} already delivered)" if self.delivered else ""
        )
        self.attempts.append(
            AttemptRecord(
                message_id=self.message.id,
                relay_id=relay.id,
                relay_name=relay.name,
                at=now,
                outcome="logged",
                response=detail,
            )
        )
        events = [self._event(now, "logged", detail, relay=relay)]
        return self._outcome(LOGGED, events, relay_id=relay.id)

    def _outcome(
        self,
        status: str,
        events: list[EventRecord],
        *,
        next_attempt_at: datetime | None = None,
        pending: list[str] | None = None,
        last_error: str | None = None,
        relay_id: int | None = None,
        sent_at: datetime | None = None,
        waiting_for: RelayState | None = None,
        attempted: bool = True,
    ) -> Outcome:
        """Return the outcome, the failover events (which say how it ended) first."""
        failovers = [
            self._event(
                f.at,
                "failover",
                f"{f.source.name} → {f.target.name}: {f.reason}",
                {"from": f.source.name, "to": f.target.name, "reason": f.reason, "outcome": status},
                relay=f.source,
            )
            for f in self.failovers
        ]
        return Outcome(
            message=self.message.id,
            status=status,
            next_attempt_at=next_attempt_at,
            pending_recipients=pending,
            last_error=last_error,
            relay_id=relay_id,
            sent_at=sent_at,
            unknown_outcomes=self.unknown,
            waiting_for_relay_id=waiting_for.id if waiting_for else None,
            attempted=attempted,
            attempts=tuple(self.attempts),
            events=(*failovers, *events),
        )

    def _event(
        self,
        at: datetime,
        kind: str,
        detail: str,
        data: dict[str, str] | None = None,
        relay: RelayState | None = None,
    ) -> EventRecord:
        return EventRecord(
            at=at,
            type=kind,
            detail=detail,
            message_id=self.message.id,
            relay_id=relay.id if relay else None,
            data=data,
        )
