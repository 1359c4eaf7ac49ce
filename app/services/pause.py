"""The global pause of delivery, for incidents: while it is on no pass claims mail.

Nothing is rewritten: queued mail stays queued and goes out once delivery resumes.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete, select

from app import logs
from app.db import db
from app.models import Event, Switch, utcnow

log = logs.get("pause")

DELIVERY = "delivery_paused"
MAX_NOTE = 500


class PauseError(ValueError):
    """The pause cannot change as asked; the message says why."""


def current() -> Switch | None:
    """Return the pause while delivery is paused, else None."""
    return db.session.get(Switch, DELIVERY)


def is_paused(conn: Connection) -> bool:
    """Say, on a delivery pass's connection, whether delivery is paused."""
    return conn.execute(select(Switch.name).where(Switch.name == DELIVERY)).first() is not None


def pause(by: str, note: str | None = None, now: datetime | None = None) -> bool:
    """Pause all delivery; say whether it changed (False: it already was)."""
    note = " ".join((note or "").split())
    if not note:
        raise PauseError("say why: the note is shown to everyone while delivery is paused")
    if len(note) > MAX_NOTE:
        raise PauseError(f"keep the note under {MAX_NOTE} characters")
    if current() is not None:
        return False
    now = now or utcnow()
    db.session.add(Switch(name=DELIVERY, since=now, by=by, note=note))
    db.session.add(
        Event(
            at=now,
            type="delivery_paused",
            detail=f"delivery paused by {by}: {note}",
            data={"by": by},
        )
    )
    db.session.commit()
    log.warning("delivery paused", extra={"by": by, "note": note})
    return True


def resume(by: str, now: datetime | None = None) -> bool:
    """Resume delivery; say whether it changed (False: it was not paused)."""
    paused = current()
    if paused is None:
        return False
    now = now or utcnow()
    seconds = (now - paused.since).total_seconds()
    db.session.execute(delete(Switch).where(Switch.name == DELIVERY))
    db.session.add(
        Event(
            at=now,
            type="delivery_resumed",
            detail=f"delivery resumed by {by} after {seconds / 60:.0f} min",
            data={"by": by, "seconds": round(seconds, 1)},
        )
    )
    db.session.commit()
    log.warning("delivery resumed", extra={"by": by, "seconds": round(seconds, 1)})
    return True
