"""Drains: the paced release of a backlog of held mail, highest priority first.

A drain takes its messages (held, and deferred for its relay) and keeps them held;
`release_due` lets out as many as its ramp allows since it started (app/domain/ramp.py),
by priority then age, to the queue, where passes claim them in that order. Delivery
passes call it before every claim (and keep claiming while a drain still holds mail), so
the mail goes out as it is let out, in small steps, never above the ramp. A pause stops the ramp's
clock; a cancel leaves the rest held, to be released again. The counts come from the
messages themselves, so they are true whichever process sent them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, insert, select, update

from app import logs
from app.config import Settings
from app.db import db
from app.domain.ramp import MIN_BURST, Ramp
from app.models import (
    DEFERRED,
    FAILED,
    HELD,
    QUEUED,
    SENDING,
    SENT,
    Drain,
    Event,
    Message,
    Relay,
    utcnow,
)

log = logs.get("drains")

RUNNING, PAUSED, CANCELLED, DONE = "running", "paused", "cancelled", "done"
ACTIVE = (RUNNING, PAUSED)
UNLIMITED = 1e9  # messages per second: a ramp that is off


class DrainError(ValueError):
    """A drain cannot change as asked; the message says why."""


@dataclass(frozen=True)
class Progress:
    """Where a drain stands."""

    backlog: int
    released: int
    sent: int
    failed: int
    remaining: int  # not yet ended: held, queued, sending or deferred
    rate: float  # messages per second the ramp allows now (0 when not running)
    eta_seconds: float | None  # at the ramp's pace, for the messages not yet released
    duration_seconds: float  # since it started, or how long it took

    @property
    def percent(self) -> int:
        done = self.sent + self.failed
        return 100 if not self.backlog else min(100, round(100 * done / self.backlog))


def ramp_of(drain: Any) -> Ramp:
    return Ramp(drain.initial_rate, drain.factor, drain.step_seconds, drain.max_rate)


def elapsed(drain: Any, now: datetime) -> float:
    """Seconds the drain has run, pauses excluded."""
    running = (now - drain.resumed_at).total_seconds() if drain.resumed_at else 0.0
    return drain.run_seconds + max(0.0, running if drain.state == RUNNING else 0.0)


def ramp_for(settings: Settings | None, relay: Relay | None) -> Ramp:
    """Return the ramp the settings give (the defaults without them), up to the relay's max
    rate when it has one; with the ramp off, everything at once (the relay's max rate
    still holds)."""
    maximum = relay.max_rate if relay is not None else None
    if settings is None:
        return Ramp(maximum=maximum)
    if not settings.drain_ramp:
        return Ramp(initial=UNLIMITED, factor=1.0, step=3600.0, maximum=maximum)
    return Ramp(settings.drain_initial_rate, settings.drain_growth, settings.drain_step, maximum)


def start(
    which: ColumnElement[bool],
    *,
    ramp: Ramp,
    by: str,
    reason: str,
    relay: Relay | None = None,
    now: datetime | None = None,
    commit: bool = True,
) -> Drain | None:
    """Start a drain of the held (and deferred) messages `which` selects; None if there are
    none. `commit=False` leaves the transaction to the caller."""
    now = now or utcnow()
    drain = Drain(
        relay_id=relay.id if relay else None,
        reason=reason,
        created_by=by,
        state=RUNNING,
        initial_rate=ramp.initial,
        factor=ramp.factor,
        step_seconds=ramp.step,
        max_rate=ramp.maximum,
        started_at=now,
        resumed_at=now,
        run_seconds=0.0,
        backlog=0,
        released=0,
    )
    db.session.add(drain)
    db.session.flush()
    taken = db.session.execute(
        update(Message)
        .where(which, Message.status.in_((HELD, DEFERRED)))
        .values(status=HELD, next_attempt_at=None, drain_id=drain.id, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    drain.backlog = int(getattr(taken, "rowcount", 0) or 0)
    if not drain.backlog:
        db.session.delete(drain)
        db.session.flush()
        return None
    where = f" for {relay.name}" if relay else ""
    db.session.add(
        Event(
            at=now,
            type="drain_started",
            relay_id=drain.relay_id,
            detail=f"drain {drain.id}{where} started by {by}: {drain.backlog} message(s); {reason}",
            data={"drain": drain.id, "by": by, "backlog": drain.backlog},
        )
    )
    if commit:
        db.session.commit()
    log.info(
        "drain started",
        extra={
            "drain": drain.id,
            "relay": relay.name if relay else None,
            "by": by,
            "backlog": drain.backlog,
            "initial_rate": drain.initial_rate,
        },
    )
    return drain


def pace(now: datetime | None = None) -> int:
    """Release what each running drain's ramp allows by now, on the session's connection;
    finish drains that are done. Return how many messages were released."""
    released, _ = release_due(db.session.connection(), now or utcnow())
    db.session.commit()
    return released


def release_due(conn: Connection, now: datetime) -> tuple[int, int]:
    """Release what each running drain's ramp allows by now, finish drains that are done;
    return (released now, 1 if running drains still hold mail else 0).

    Delivery passes call this before each claim, so a pass keeps going while a drain
    still holds mail, and sends it as it is let out; the scheduler calls it every second
    too. Safe in several processes at once: a drain's `released` moves only from the
    value this call read, or this call releases nothing for it.
    """
    released = 0
    for drain in conn.execute(select(*_PACE_COLUMNS).where(Drain.state == RUNNING)).all():
        ramp, ran = ramp_of(drain), elapsed(drain, now)
        gained = ramp.integral(ran) - ramp.integral(drain.refilled_run)
        tokens = min(ramp.burst(ran), drain.tokens + max(0.0, gained))
        released += _release(conn, drain, tokens, ran, now)
        if drain.max_rate is None and drain.factor > 1:
            _end_ramp_if_ahead(conn, drain, ramp.rate(ran), now)
        _finish_if_done(conn, drain.id, drain.relay_id, drain.started_at, ran, now)
    # Whether any is left, not how many: a pass asks this every 50 ms during a drain.
    still = conn.execute(
        select(Message.id)
        .join(Drain, Drain.id == Message.drain_id)
        .where(Drain.state == RUNNING, Message.status == HELD)
        .limit(1)
    ).first()
    return released, int(still is not None)


_PACE_COLUMNS = (
    Drain.id,
    Drain.state,
    Drain.relay_id,
    Drain.tokens,
    Drain.refilled_run,
    Drain.run_seconds,
    Drain.resumed_at,
    Drain.started_at,
    Drain.initial_rate,
    Drain.factor,
    Drain.step_seconds,
    Drain.max_rate,
)


def _release(conn: Connection, drain: Any, tokens: float, ran: float, now: datetime) -> int:
    """Queue as many of a drain's held messages as its tokens allow (by priority, then
    age); keep the rest of the tokens; return how many were queued.

    One statement whatever the count (a drain with its ramp off releases its whole backlog
    at once), under a savepoint undone if another process refilled the drain first.
    """
    count = math.floor(tokens + 1e-9)
    with conn.begin_nested() as savepoint:
        queued = 0
        if count > 0:
            nxt = (
                select(Message.id)
                .where(Message.drain_id == drain.id, Message.status == HELD)
                .order_by(Message.priority, Message.created_at, Message.id)
                .limit(count)
            )
            queued = conn.execute(
                update(Message)
                .where(Message.id.in_(nxt.scalar_subquery()))
                .values(
                    status=QUEUED, next_attempt_at=now, waiting_for_relay_id=None, updated_at=now
                )
            ).rowcount
        moved = conn.execute(
            update(Drain)
            .where(
                Drain.id == drain.id,
                Drain.refilled_run == drain.refilled_run,
                Drain.state == RUNNING,
            )
            .values(released=Drain.released + queued, tokens=tokens - queued, refilled_run=ran)
        ).rowcount
        if not moved:
            savepoint.rollback()  # another process refilled it meanwhile: its turn
            return 0
        _note_rate_change(conn, drain, ran, now)
    return int(queued)


def _end_ramp_if_ahead(conn: Connection, drain: Any, rate: float, now: datetime) -> None:
    """End a ramp without a ceiling once it lets out more than sending achieves: more than
    a second's worth released and not yet taken. It stays at that rate from then on."""
    waiting = conn.execute(
        select(func.count())
        .select_from(Message)
        .where(Message.drain_id == drain.id, Message.status == QUEUED)
    ).scalar_one()
    if waiting <= max(MIN_BURST, rate):
        return
    ended = conn.execute(
        update(Drain).where(Drain.id == drain.id, Drain.max_rate.is_(None)).values(max_rate=rate)
    ).rowcount
    if not ended:
        return
    detail = (
        f"drain {drain.id}: the ramp ended at {rate:g} msg/s, more than sending achieves "
        f"({waiting} released messages wait to be sent)"
    )
    conn.execute(
        insert(Event).values(
            at=now,
            type="drain_rate",
            relay_id=drain.relay_id,
            detail=detail,
            data={"drain": drain.id, "rate": rate, "ended": True, "waiting": int(waiting)},
        )
    )
    log.info("drain ramp ended", extra={"drain": drain.id, "rate": rate, "waiting": waiting})


def _note_rate_change(conn: Connection, drain: Any, ran: float, now: datetime) -> None:
    """Log the ramp's step up (an event too), when one happened since the last refill."""
    ramp = ramp_of(drain)
    before, after = ramp.rate(drain.refilled_run), ramp.rate(ran)
    if after == before:
        return
    detail = f"drain {drain.id}: the ramp is at {after:g} msg/s (was {before:g})"
    conn.execute(
        insert(Event).values(
            at=now,
            type="drain_rate",
            relay_id=drain.relay_id,
            detail=detail,
            data={"drain": drain.id, "rate": after, "was": before},
        )
    )
    log.info("drain rate", extra={"drain": drain.id, "rate": after, "was": before})


def counts(drain_id: int, conn: Connection | None = None) -> dict[str, int]:
    """Return how many of a drain's messages are in each status."""
    query = (
        select(Message.status, func.count())
        .where(Message.drain_id == drain_id)
        .group_by(Message.status)
    )
    rows = (conn or db.session).execute(query)
    return {status: int(n) for status, n in rows}


def _finish_if_done(
    conn: Connection,
    drain_id: int,
    relay_id: int | None,
    started_at: datetime,
    ran: float,
    now: datetime,
) -> None:
    """Mark a drain done once none of its mail is held, queued or being sent."""
    unfinished = conn.execute(
        select(Message.id)
        .where(Message.drain_id == drain_id, Message.status.in_((HELD, QUEUED, SENDING)))
        .limit(1)
    ).first()
    if unfinished is not None:  # asked every 50 ms during a drain: one row, not a count
        return
    by_status = counts(drain_id, conn)
    done = conn.execute(
        update(Drain)
        .where(Drain.id == drain_id, Drain.state == RUNNING)
        .values(state=DONE, ended_at=now, run_seconds=ran, resumed_at=None)
    ).rowcount
    if not done:
        return
    seconds = (now - started_at).total_seconds()
    sent, failed = by_status.get(SENT, 0), by_status.get(FAILED, 0)
    deferred = by_status.get(DEFERRED, 0)
    conn.execute(
        insert(Event).values(
            at=now,
            type="drain_finished",
            relay_id=relay_id,
            detail=(
                f"drain {drain_id} finished in {seconds:.0f} s: {sent} sent, {failed} failed"
                + (f", {deferred} deferred (retried later)" if deferred else "")
            ),
            data={"drain": drain_id, "seconds": round(seconds, 1), "sent": sent, "failed": failed},
        )
    )
    log.info(
        "drain finished",
        extra={"drain": drain_id, "seconds": round(seconds, 1), "sent": sent, "failed": failed},
    )


def waiting() -> int:
    """Return how many messages running drains have yet to release."""
    return int(
        db.session.scalar(
            select(func.count())
            .select_from(Message)
            .join(Drain, Drain.id == Message.drain_id)
            .where(Drain.state == RUNNING, Message.status == HELD)
        )
        or 0
    )


# -- an operator's hand -------------------------------------------------------------------


def _event(drain: Drain, kind: str, detail: str, by: str, now: datetime) -> None:
    db.session.add(
        Event(
            at=now,
            type=kind,
            relay_id=drain.relay_id,
            detail=detail,
            data={"drain": drain.id, "by": by},
        )
    )


def pause(drain: Drain, by: str, now: datetime | None = None) -> None:
    """Stop releasing; the ramp's clock stops too."""
    now = now or utcnow()
    if drain.state != RUNNING:
        raise DrainError(f"drain {drain.id} is {drain.state}, not running")
    drain.run_seconds = elapsed(drain, now)
    drain.resumed_at = None
    drain.state = PAUSED
    _event(drain, "drain_paused", f"drain {drain.id} paused by {by}", by, now)
    db.session.commit()
    log.info("drain paused", extra={"drain": drain.id, "by": by})


def resume(drain: Drain, by: str, now: datetime | None = None) -> None:
    """Release again, from where the ramp stood."""
    now = now or utcnow()
    if drain.state != PAUSED:
        raise DrainError(f"drain {drain.id} is {drain.state}, not paused")
    drain.state, drain.resumed_at = RUNNING, now
    _event(drain, "drain_resumed", f"drain {drain.id} resumed by {by}", by, now)
    db.session.commit()
    log.info("drain resumed", extra={"drain": drain.id, "by": by})


def cancel(drain: Drain, by: str, now: datetime | None = None) -> int:
    """Stop the drain for good; what it had not released stays held. Return how many."""
    now = now or utcnow()
    if drain.state not in ACTIVE:
        raise DrainError(f"drain {drain.id} is {drain.state} already")
    kept = db.session.execute(
        update(Message)
        .where(Message.drain_id == drain.id, Message.status == HELD)
        .values(waiting_for_relay_id=drain.relay_id, drain_id=None)
        .execution_options(synchronize_session=False)
    )
    held = int(getattr(kept, "rowcount", 0) or 0)
    drain.run_seconds, drain.resumed_at = elapsed(drain, now), None
    drain.state, drain.ended_at = CANCELLED, now
    detail = f"drain {drain.id} cancelled by {by}; {held} message(s) stay held"
    _event(drain, "drain_cancelled", detail, by, now)
    db.session.commit()
    log.info("drain cancelled", extra={"drain": drain.id, "by": by, "held": held})
    return held


def progress(drain: Drain, now: datetime | None = None) -> Progress:
    """Return where a drain stands."""
    return progresses([drain], now)[0][1]


def progresses(listed: list[Drain], now: datetime | None = None) -> list[tuple[Drain, Progress]]:
    """Return each drain with where it stands, its counts read in one query for all."""
    now = now or utcnow()
    by_drain: dict[int, dict[str, int]] = {d.id: {} for d in listed}
    if listed:
        rows = db.session.execute(
            select(Message.drain_id, Message.status, func.count())
            .where(Message.drain_id.in_(by_drain))
            .group_by(Message.drain_id, Message.status)
        )
        for drain_id, status, n in rows:
            if drain_id is not None:
                by_drain[drain_id][status] = int(n)
    return [(d, _progress(d, by_drain[d.id], now)) for d in listed]


def _progress(drain: Drain, by_status: dict[str, int], now: datetime) -> Progress:
    ramp, ran = ramp_of(drain), elapsed(drain, now)
    unreleased = by_status.get(HELD, 0)
    running = drain.state == RUNNING
    remaining = sum(by_status.get(s, 0) for s in (HELD, QUEUED, SENDING, DEFERRED))
    end = drain.ended_at or now
    return Progress(
        backlog=drain.backlog,
        released=drain.released,
        sent=by_status.get(SENT, 0),
        failed=by_status.get(FAILED, 0),
        remaining=remaining,
        rate=ramp.rate(ran) if running else 0.0,
        eta_seconds=ramp.seconds_for(unreleased, ran) if running else None,
        duration_seconds=(end - drain.started_at).total_seconds(),
    )


def listing(limit: int = 20) -> list[Drain]:
    """Return the running and paused drains, then the latest past ones."""
    active = list(
        db.session.scalars(select(Drain).where(Drain.state.in_(ACTIVE)).order_by(Drain.id))
    )
    past = list(
        db.session.scalars(
            select(Drain).where(Drain.state.not_in(ACTIVE)).order_by(Drain.id.desc()).limit(limit)
        )
    )
    return active + past


def get(drain_id: int) -> Drain:
    drain = db.session.get(Drain, drain_id)
    if drain is None:
        raise DrainError(f"no drain {drain_id}")
    return drain


def held_filter(relay_id: int | None = None) -> ColumnElement[bool]:
    """Select held mail that no running drain owns (all, or held for one relay)."""
    condition: Any = (Message.status == HELD) & Message.drain_id.is_(None)
    if relay_id is not None:
        condition = condition & (Message.waiting_for_relay_id == relay_id)
    return condition
