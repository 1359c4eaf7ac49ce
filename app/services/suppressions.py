"""The suppression list: addresses a hard bounce said do not exist, no longer sent to.

A delivery pass reads the suppressions of the recipients it claimed (one query a batch);
a suppressed recipient fails at once with the reason, without an attempt. Operators see,
search and lift suppressions on the dashboard and with `relayboard suppressions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.exc import IntegrityError

from app import logs
from app.db import db
from app.models import Event, Suppression, utcnow

log = logs.get("suppressions")

MAX_SEARCH = 320


def suppress(
    address: str,
    reason: str,
    source: str,
    *,
    relay_id: int | None = None,
    message_id: int | None = None,
    now: datetime | None = None,
    commit: bool = True,
) -> bool:
    """Suppress an address; say whether it is new (False: it already was).

    Under a savepoint, so a repeat leaves the caller's transaction whole; `commit=False`
    leaves the commit to the caller (a batch of webhooks).
    """
    address = address.strip().lower()
    if not address or "@" not in address:
        raise ValueError(f"{address!r} is not an email address")
    row = Suppression(
        address=address,
        reason=reason[:1000],
        source=source,
        relay_id=relay_id,
        message_id=message_id,
        created_at=now or utcnow(),
    )
    try:
        with db.session.begin_nested():
            db.session.add(row)
    except IntegrityError:
        return False
    if commit:
        db.session.commit()
    log.warning(
        "address suppressed", extra={"address": address, "source": source, "reason": reason}
    )
    return True


def lift(address: str, by: str) -> bool:
    """Lift an address's suppression; say whether it was suppressed."""
    address = address.strip().lower()
    gone = db.session.execute(delete(Suppression).where(Suppression.address == address))
    if not getattr(gone, "rowcount", 0):
        db.session.rollback()
        return False
    db.session.add(
        Event(
            type="suppression_lifted",
            detail=f"suppression of {address} lifted by {by}",
            data={"address": address, "by": by},
        )
    )
    db.session.commit()
    log.info("suppression lifted", extra={"address": address, "by": by})
    return True


def listing(search: str | None = None, limit: int = 200) -> list[Suppression]:
    """Return suppressions, newest first; `search` matches part of the address."""
    query = select(Suppression).order_by(Suppression.created_at.desc(), Suppression.id.desc())
    if search:
        text = search.strip().lower()[:MAX_SEARCH]
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Suppression.address.like(f"%{escaped}%", escape="\\"))
    return list(db.session.scalars(query.limit(limit)))


def mark(conn: Connection, claimed: Sequence[Any]) -> None:
    """Note on each claimed message which of its recipients are suppressed, and why."""
    addresses = {r.lower() for message in claimed for r in message.recipients}
    if not addresses:
        return
    found = dict(
        conn.execute(
            select(Suppression.address, Suppression.reason).where(
                Suppression.address.in_(addresses)
            )
        ).all()
    )
    if not found:
        return
    for message in claimed:
        message.suppressed = {r: found[r.lower()] for r in message.recipients if r.lower() in found}
