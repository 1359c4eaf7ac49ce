"""Live figures for the overview: queue depth, delays, throughput, relays, and the honest state.

Every function here runs a small, fixed number of queries that an index serves, whatever the
number of relays or messages: the overview polls them every few seconds.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, case, cast, func, select

from app.crypto import SecretBox
from app.db import db
from app.domain.breaker import CircuitState
from app.models import (
    DEFERRED,
    HELD,
    QUEUED,
    SENDING,
    ApiKey,
    Attempt,
    Event,
    HealthCheck,
    Message,
    Relay,
    Switch,
    utcnow,
)
from app.services import pause
from app.services.relays import unusable

OPERATIONAL, DEGRADED, MAINTENANCE, OUTAGE = "operational", "degraded", "maintenance", "outage"

# Statuses of mail still in the gateway's hands, and of mail waiting to be tried.
ACTIVE = (QUEUED, SENDING, DEFERRED, HELD)
WAITING = (QUEUED, DEFERRED)
# Attempt outcomes (delivery._note_attempt): a delivery, or a try that did not deliver.
SEND_OUTCOMES = ("sent", "partial")
FAILURE_OUTCOMES = ("failover", "deferred", "rejected", "unknown")
# Events a failed delivery leaves behind (served by the events(type, at) index).
FAILURE_EVENTS = ("failover", "deferred")

DELAY_THRESHOLD = timedelta(minutes=5)
FAILURE_WINDOW = timedelta(minutes=10)


@dataclass(frozen=True)
class Minute:
    """Attempts that started in one minute: deliveries and tries that did not deliver."""

    start: datetime
    sent: int
    failed: int


@dataclass(frozen=True)
class RelayTile:
    """A relay as the overview shows it: its row, its circuit as of now, its last health check."""

    relay: Relay
    circuit: str
    health: HealthCheck | None

    @property
    def trial_due(self) -> bool:
        """Say whether the open timeout has passed, so the next send is a half-open trial."""
        return self.relay.circuit_state == CircuitState.OPEN and self.circuit != CircuitState.OPEN


@dataclass(frozen=True)
class Failover:
    """One failover: a message moved from one relay to the next, and how it ended."""

    at: datetime
    message_id: int | None
    source: str
    target: str
    reason: str
    outcome: str


@dataclass(frozen=True)
class RelayCircuit:
    """What the overall state needs of a relay."""

    name: str
    enabled: bool
    circuit: str
    open_until: datetime | None = None
    reason: str | None = None
    unusable: str | None = None  # e.g. its password cannot be decrypted


def circuit_now(state: str, open_until: datetime | None, now: datetime) -> str:
    """Return a circuit's state as delivery sees it now: an expired open circuit allows a trial."""
    if state == CircuitState.OPEN and open_until is not None and now >= open_until:
        return CircuitState.HALF_OPEN.value
    return state


def queue_depth() -> dict[str, int]:
    """Count the messages in each active status (queued, sending, deferred, held)."""
    rows = db.session.execute(
        select(Message.status, func.count())
        .where(Message.status.in_(ACTIVE))
        .group_by(Message.status)
    )
    depth = dict.fromkeys(ACTIVE, 0)
    depth.update({status: count for status, count in rows})
    return depth


def oldest_queued_age(now: datetime | None = None) -> float | None:
    """Return how many seconds the oldest queued or deferred message has waited, or None."""
    # One MIN per status: each is a single seek in the (status, created_at) index.
    firsts = [
        select(func.min(Message.created_at)).where(Message.status == status).scalar_subquery()
        for status in WAITING
    ]
    oldest = [at for at in db.session.execute(select(*firsts)).one() if at is not None]
    if not oldest:
        return None
    return max(0.0, ((now or utcnow()) - min(oldest)).total_seconds())


def sends_per_minute(
    window: timedelta = timedelta(minutes=5), now: datetime | None = None
) -> float:
    """Return the deliveries per minute over the last `window`."""
    since = (now or utcnow()) - window
    sent = db.session.scalar(
        select(func.count())
        .select_from(Attempt)
        .where(Attempt.at >= since, Attempt.outcome.in_(SEND_OUTCOMES))
    )
    return (sent or 0) / (window.total_seconds() / 60)


def series(minutes: int = 60, now: datetime | None = None) -> list[Minute]:
    """Return deliveries and failed tries per minute, oldest first, the current minute last."""
    current = _epoch_minute(now or utcnow())
    first = current - minutes + 1
    bucket = _minute_of(Attempt.at).label("minute")
    rows = db.session.execute(
        select(
            bucket,
            func.sum(case((Attempt.outcome.in_(SEND_OUTCOMES), 1), else_=0)),
            func.sum(case((Attempt.outcome.in_(FAILURE_OUTCOMES), 1), else_=0)),
        )
        .where(Attempt.at >= _from_epoch_minute(first))
        .group_by(bucket)
    )
    counts = {int(minute): (int(sent or 0), int(failed or 0)) for minute, sent, failed in rows}
    return [
        Minute(_from_epoch_minute(m), *counts.get(m, (0, 0))) for m in range(first, current + 1)
    ]


def relay_tiles(now: datetime | None = None) -> list[RelayTile]:
    """Return every relay in priority order with its circuit as of now and its last health check."""
    now = now or utcnow()
    relays = list(db.session.scalars(select(Relay).order_by(Relay.priority, Relay.name)))
    if not relays:
        return []
    # Each relay's newest check is one seek in the (relay_id, at) index.
    newest = (
        select(HealthCheck.id)
        .where(HealthCheck.relay_id == Relay.id)
        .order_by(HealthCheck.at.desc())
        .limit(1)
        .correlate(Relay)
        .scalar_subquery()
    )
    checks = {
        check.relay_id: check
        for check in db.session.scalars(
            select(HealthCheck).where(HealthCheck.id.in_(select(newest).select_from(Relay)))
        )
    }
    return [
        RelayTile(
            relay=relay,
            circuit=circuit_now(relay.circuit_state, relay.circuit_open_until, now),
            health=checks.get(relay.id),
        )
        for relay in relays
    ]


def recent_failovers(limit: int = 10) -> list[Failover]:
    """Return the latest failovers, newest first."""
    rows = db.session.execute(
        select(Event.at, Event.message_id, Event.data, Event.detail)
        .where(Event.type == "failover")
        .order_by(Event.at.desc(), Event.id.desc())
        .limit(limit)
    )
    failovers = []
    for at, message_id, data, detail in rows:
        data = data or {}
        failovers.append(
            Failover(
                at=at,
                message_id=message_id,
                source=str(data.get("from", "?")),
                target=str(data.get("to", "?")),
                reason=str(data.get("reason") or detail),
                outcome=str(data.get("outcome", "")),
            )
        )
    return failovers


def has_live_api_key() -> bool:
    """Say whether any application can send: some API key is not revoked."""
    live = select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)
    return db.session.scalar(live) is not None


@dataclass(frozen=True)
class State:
    """The gateway's overall state, the reasons for it, and the global pause while it is on
    (who paused delivery, since when, and why: pages show them)."""

    state: str
    reasons: list[str]
    paused: Switch | None = None


def overall_state(box: SecretBox, now: datetime | None = None) -> tuple[str, list[str]]:
    """Return the gateway's state and the reasons for it (see `current_state`)."""
    found = current_state(box, now)
    return found.state, found.reasons


def current_state(box: SecretBox, now: datetime | None = None) -> State:
    """Return the gateway's state, judged from the global pause, relays and the queue.

    The states are operational, degraded, maintenance and outage. While an operator has
    paused all delivery the state is maintenance (a deliberate stop, not an incident),
    its first reason says who paused it, since when and why, and the reasons that would
    hold once delivery resumes follow.
    """
    now = now or utcnow()
    paused = pause.current()
    relays = [
        RelayCircuit(
            relay.name,
            relay.enabled,
            circuit_now(relay.circuit_state, relay.circuit_open_until, now),
            relay.circuit_open_until,
            relay.circuit_reason,
            unusable(relay, box),
        )
        for relay in db.session.scalars(select(Relay).order_by(Relay.priority, Relay.name))
    ]
    depth = queue_depth()
    recent_failures = depth[DEFERRED] > 0 and _failed_since(now - FAILURE_WINDOW)
    state, reasons = assess(
        relays,
        depth,
        oldest_queued_age(now),
        recent_failures,
        paused=pause_reason(paused, now) if paused else None,
    )
    return State(state, reasons, paused)


def pause_reason(paused: Switch, now: datetime | None = None) -> str:
    """Say who paused delivery, since when and why."""
    now = now or utcnow()
    today = paused.since.date() == now.date()
    since = f"{paused.since:%H:%M}" if today else f"{paused.since:%Y-%m-%d %H:%M}"
    return f"delivery paused by {paused.by or 'someone'} since {since} UTC: {paused.note}"


def assess(
    relays: Sequence[RelayCircuit],
    depth: Mapping[str, int],
    oldest_age: float | None,
    recent_failures: bool,
    paused: str | None = None,
) -> tuple[str, list[str]]:
    """Judge the state from its inputs; delays are incidents, not footnotes.

    0. Maintenance: `paused` (the reason delivery is paused) is given; the reasons the
       rules below find follow it.
    1. Outage: no enabled relay has a closed or half-open circuit (none enabled, or every
       enabled one open), so nothing waiting or arriving can be delivered.
    2. Degraded: an enabled relay's circuit is open or half-open; or the oldest waiting
       message is older than DELAY_THRESHOLD; or mail is deferred after delivery failures
       within FAILURE_WINDOW.
    3. Operational otherwise.
    """
    outage: list[str] = []
    degraded: list[str] = []
    waiting = sum(depth.get(status, 0) for status in WAITING)
    enabled = [r for r in relays if r.enabled]
    usable = [r for r in enabled if r.circuit != CircuitState.OPEN and not r.unusable]
    if not usable:
        if not relays:
            why = "no relay is configured"
        elif not enabled:
            why = "no relay is enabled"
        elif all(r.circuit == CircuitState.OPEN for r in enabled):
            why = "every enabled relay's circuit is open"
        else:
            why = "no enabled relay can take mail"
        held = f"{waiting} message(s) waiting" if waiting else "new mail will wait"
        outage.append(f"{why}: nothing can be delivered ({held})")
    for relay in enabled:
        if relay.unusable:
            degraded.append(f"{relay.name}: unusable — {relay.unusable}")
        elif relay.circuit == CircuitState.OPEN:
            until = f" until {relay.open_until:%H:%M} UTC" if relay.open_until else ""
            because = f" — {relay.reason}" if relay.reason else ""
            degraded.append(f"{relay.name}: circuit open{until}{because}")
        elif relay.circuit == CircuitState.HALF_OPEN:
            degraded.append(f"{relay.name}: circuit half-open, the next send is a trial")
    if oldest_age is not None and oldest_age > DELAY_THRESHOLD.total_seconds():
        degraded.append(f"mail is delayed: the oldest waiting message is {span(oldest_age)} old")
    if depth.get(DEFERRED, 0) and recent_failures:
        minutes = int(FAILURE_WINDOW.total_seconds() // 60)
        degraded.append(
            f"{depth[DEFERRED]} message(s) deferred after delivery failures "
            f"in the last {minutes} minutes"
        )
    if paused:
        return MAINTENANCE, [paused, *outage, *degraded]
    if outage:
        return OUTAGE, outage + degraded
    if degraded:
        return DEGRADED, degraded
    return OPERATIONAL, []


def _failed_since(since: datetime) -> bool:
    """Say whether any delivery failed (failed over or was deferred) since `since`."""
    found = select(Event.id).where(Event.type.in_(FAILURE_EVENTS), Event.at >= since).limit(1)
    return db.session.scalar(found) is not None


def span(seconds: float) -> str:
    """Say a duration in the largest sensible unit ("12 min", "3 h 5 min")."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _epoch_minute(at: datetime) -> int:
    return calendar.timegm(at.timetuple()) // 60


def _from_epoch_minute(minute: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(minutes=minute)


def _minute_of(column: Any) -> ColumnElement[int]:
    """Return SQL for the whole minutes since the epoch of a naive-UTC timestamp column."""
    if db.session.get_bind().dialect.name == "sqlite":
        return cast(func.strftime("%s", column), Integer) // 60
    return cast(func.floor(func.extract("epoch", column) / 60), Integer)
