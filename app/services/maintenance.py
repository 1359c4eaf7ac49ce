"""Relays in maintenance: entering and leaving it, planned windows, and releasing the mail
held or deferred for a relay when its maintenance ends.

Maintenance is entered by the ESP's webhook, by an operator (dashboard or CLI), by a
planned window, or by the relay's own maintenance reply; every start and end is an
event and a log line naming who or what caused it. While a relay is in maintenance no
message is attempted on it; its `maintenance_policy` says whether mail whose first
choice it is waits (`hold`) or takes the next usable relay (`reroute`), and delivery
applies it (app/services/delivery/message.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Update, func, insert, select, update

from app import logs
from app.config import Settings
from app.db import db
from app.models import DEFERRED, HELD, Event, MaintenanceWindow, Message, Relay, utcnow
from app.services import drains

log = logs.get("maintenance")

PLANNED, ACTIVE, DONE, CANCELLED = "planned", "active", "done", "cancelled"
BY_REPLY = "reply"  # maintenance_by of a relay whose own reply said it is in maintenance
MAX_NOTE = 500


class MaintenanceError(ValueError):
    """A maintenance change cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class Released:
    """What the end of a maintenance sent back to the queue."""

    held: int = 0
    deferred: int = 0
    drain_id: int | None = None  # the drain that releases them

    @property
    def total(self) -> int:
        return self.held + self.deferred


def _changed(statement: Update) -> int:
    """Run an UPDATE in the session; return how many rows it changed."""
    result = db.session.execute(statement.execution_options(synchronize_session=False))
    return int(cast(CursorResult[Any], result).rowcount or 0)


def _note(note: str | None) -> str:
    text = " ".join((note or "").split())
    if len(text) > MAX_NOTE:
        raise MaintenanceError(f"keep the note under {MAX_NOTE} characters")
    return text


def in_maintenance(relay: Relay) -> bool:
    """Say whether the relay is in maintenance now."""
    return relay.maintenance_since is not None


def start(relay: Relay, by: str, note: str | None = None, now: datetime | None = None) -> bool:
    """Put a relay in maintenance; say whether it changed (False: it already was)."""
    note = _note(note)
    now = now or utcnow()
    entered = _changed(
        update(Relay)
        .where(Relay.id == relay.id, Relay.maintenance_since.is_(None))
        .values(maintenance_since=now, maintenance_reason=note or None, maintenance_by=by)
    )
    if entered:
        detail = f"maintenance started by {by}" + (f": {note}" if note else "")
        db.session.add(
            Event(
                at=now,
                type="maintenance_start",
                relay_id=relay.id,
                detail=detail,
                data={"by": by, "note": note, "policy": relay.maintenance_policy},
            )
        )
    db.session.commit()
    db.session.refresh(relay)
    if entered:
        log.warning(
            "maintenance started",
            extra={"relay": relay.name, "by": by, "note": note, "policy": relay.maintenance_policy},
        )
    return bool(entered)


def enter_from_reply(conn: Connection, relay_id: int, at: datetime, reason: str) -> bool:
    """Put a relay in maintenance because its reply said so (a delivery pass's write, on
    the pass's connection); say whether it changed. It lasts until the ESP's webhook, an
    operator or a good health probe ends it."""
    entered = conn.execute(
        update(Relay)
        .where(Relay.id == relay_id, Relay.maintenance_since.is_(None))
        .values(maintenance_since=at, maintenance_reason=reason[:500], maintenance_by=BY_REPLY)
        .returning(Relay.name, Relay.maintenance_policy)
    ).first()
    if entered is None:
        return False
    conn.execute(
        insert(Event).values(
            at=at,
            type="maintenance_start",
            relay_id=relay_id,
            detail=f"maintenance started by its reply: {reason}",
            data={"by": BY_REPLY, "note": reason, "policy": entered.maintenance_policy},
        )
    )
    log.warning(
        "maintenance started",
        extra={
            "relay": entered.name,
            "by": BY_REPLY,
            "note": reason,
            "policy": entered.maintenance_policy,
        },
    )
    return True


def end(
    relay: Relay,
    by: str,
    note: str | None = None,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> Released | None:
    """Take a relay out of maintenance and start the drain of its mail (at `settings`'
    ramp); None if it was not in maintenance."""
    note = _note(note)
    now = now or utcnow()
    since = relay.maintenance_since
    left = _changed(
        update(Relay)
        .where(Relay.id == relay.id, Relay.maintenance_since.is_not(None))
        .values(maintenance_since=None, maintenance_reason=None, maintenance_by=None)
    )
    if not left:
        db.session.rollback()
        return None
    released = _release(relay, by, now, settings)
    seconds = (now - since).total_seconds() if since else 0.0
    detail = (
        f"maintenance ended by {by} after {seconds / 60:.0f} min; "
        f"{released.held} held and {released.deferred} deferred message(s) released"
        + (f": {note}" if note else "")
    )
    db.session.add(
        Event(
            at=now,
            type="maintenance_end",
            relay_id=relay.id,
            detail=detail,
            data={
                "by": by,
                "note": note,
                "seconds": round(seconds, 1),
                "held": released.held,
                "deferred": released.deferred,
            },
        )
    )
    db.session.commit()
    db.session.refresh(relay)
    log.warning(
        "maintenance ended",
        extra={
            "relay": relay.name,
            "by": by,
            "seconds": round(seconds, 1),
            "held": released.held,
            "deferred": released.deferred,
        },
    )
    return released


def _release(relay: Relay, by: str, now: datetime, settings: Settings | None) -> Released:
    """Start a drain of the mail held or deferred for a relay: it goes out highest priority
    first, at a pace that ramps up (app/services/drains.py)."""
    waiting = Message.waiting_for_relay_id == relay.id
    found = dict(
        db.session.execute(
            select(Message.status, func.count())
            .where(waiting, Message.status.in_((HELD, DEFERRED)))
            .group_by(Message.status)
        ).all()
    )
    drain = drains.start(
        waiting,
        ramp=drains.ramp_for(settings, relay),
        by=by,
        reason=f"the end of {relay.name}'s maintenance",
        relay=relay,
        now=now,
        commit=False,
    )
    return Released(
        held=int(found.get(HELD, 0)),
        deferred=int(found.get(DEFERRED, 0)),
        drain_id=drain.id if drain else None,
    )


# -- planned windows ----------------------------------------------------------------------


def plan(
    relay: Relay,
    starts_at: datetime,
    ends_at: datetime,
    by: str,
    note: str | None = None,
    now: datetime | None = None,
) -> MaintenanceWindow:
    """Plan a maintenance window (naive UTC times); it starts and ends by itself."""
    note = _note(note)
    now = now or utcnow()
    if ends_at <= starts_at:
        raise MaintenanceError("the window must end after it starts")
    if ends_at <= now:
        raise MaintenanceError("the window has already ended")
    window = MaintenanceWindow(
        relay_id=relay.id,
        starts_at=starts_at,
        ends_at=ends_at,
        note=note,
        created_by=by,
        created_at=now,
        state=PLANNED,
    )
    db.session.add(window)
    db.session.add(
        Event(
            at=now,
            type="maintenance_planned",
            relay_id=relay.id,
            detail=(
                f"maintenance planned by {by} from {starts_at:%Y-%m-%d %H:%M} to "
                f"{ends_at:%Y-%m-%d %H:%M} UTC" + (f": {note}" if note else "")
            ),
            data={"by": by, "note": note},
        )
    )
    db.session.commit()
    return window


def cancel_plan(window: MaintenanceWindow, by: str, settings: Settings | None = None) -> None:
    """Cancel a planned window; a window already under way is ended instead."""
    if window.state == ACTIVE:
        window.state = DONE
        db.session.commit()
        end(window.relay, by, f"window {window.id} cancelled", settings=settings)
        return
    if window.state != PLANNED:
        raise MaintenanceError(f"window {window.id} is {window.state}, not planned")
    window.state = CANCELLED
    db.session.commit()


def windows(include_past: bool = False) -> list[MaintenanceWindow]:
    """Return the planned and running windows (and the past ones if asked), soonest first."""
    query = select(MaintenanceWindow).order_by(MaintenanceWindow.starts_at)
    if not include_past:
        query = query.where(MaintenanceWindow.state.in_((PLANNED, ACTIVE)))
    return list(db.session.scalars(query))


def tick(now: datetime | None = None, settings: Settings | None = None) -> int:
    """Start the windows whose time has come and end those that are over; return changes.

    Each window moves from state to state in one guarded UPDATE, so whichever process
    ticks first starts or ends it, once.
    """
    now = now or utcnow()
    changed = 0
    due = select(MaintenanceWindow).where(
        MaintenanceWindow.state == PLANNED, MaintenanceWindow.starts_at <= now
    )
    for window in db.session.scalars(due).all():
        running = window.ends_at > now  # a window found after its end never starts
        if _move(window, PLANNED, ACTIVE if running else DONE) and running:
            start(window.relay, f"plan {window.id}", window.note, now)
            changed += 1
    over = select(MaintenanceWindow).where(
        MaintenanceWindow.state == ACTIVE, MaintenanceWindow.ends_at <= now
    )
    for window in db.session.scalars(over).all():
        if _move(window, ACTIVE, DONE):
            end(window.relay, f"plan {window.id}", window.note, now, settings)
            changed += 1
    return changed


def _move(window: MaintenanceWindow, before: str, after: str) -> bool:
    """Move a window from one state to the next; say whether this call did."""
    moved = _changed(
        update(MaintenanceWindow)
        .where(MaintenanceWindow.id == window.id, MaintenanceWindow.state == before)
        .values(state=after)
    )
    db.session.commit()
    return bool(moved)


def held_counts() -> dict[int, int]:
    """Return how many messages each relay holds."""
    rows = db.session.execute(
        select(Message.waiting_for_relay_id, func.count())
        .where(Message.status == HELD, Message.waiting_for_relay_id.is_not(None))
        .group_by(Message.waiting_for_relay_id)
    )
    return {relay_id: int(count) for relay_id, count in rows if relay_id is not None}
