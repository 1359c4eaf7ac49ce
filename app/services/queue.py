"""The durable queue: enqueue, claim with a lease, finish, reap expired leases."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from app import logs
from app.db import db
from app.db.commit import group_commit
from app.domain.mime import BuiltMessage
from app.models import (
    HELD,
    QUEUED,
    SENDING,
    Attempt,
    Event,
    Message,
    Relay,
    utcnow,
)
from app.services.records import AttemptRecord, EventRecord

log = logs.get("queue")


_MESSAGES = Message.__table__
_INSERT_ATTEMPT = Attempt.__table__.insert()
_INSERT_EVENT = Event.__table__.insert()


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused with a different request body."""


@dataclass(frozen=True)
class Enqueued:
    """The answer to an enqueue: the message row, and whether it was a replay."""

    id: int
    message_id: str
    status: str
    replayed: bool = False


def body_hash(body: bytes) -> str:
    """Return the digest that ties an Idempotency-Key to one request body."""
    return hashlib.sha256(body).hexdigest()


def enqueue(
    built: BuiltMessage,
    *,
    pinned_relay_id: int | None = None,
    priority: int = 1,
    tags: list[str] | None = None,
    api_key_id: int | None = None,
    idempotency_key: str | None = None,
    idempotency_hash: str | None = None,
) -> Enqueued:
    """Store a message durably and make it due now; replay or refuse a reused Idempotency-Key."""
    if idempotency_key is not None:
        existing = _find_idempotent(api_key_id, idempotency_key)
        if existing is not None:
            return _replay(existing, idempotency_hash)
    now = utcnow()
    values = {
        "message_id": built.message_id,
        "envelope_from": built.envelope_from,
        "recipients": built.recipients,
        "data": built.data,
        "size": len(built.data),
        "subject": built.subject,
        "from_header": built.from_header,
        "to_header": built.to_header,
        "priority": priority,
        "tags": tags or [],
        "status": QUEUED,
        "attempt_count": 0,
        "next_attempt_at": now,
        "api_key_id": api_key_id,
        "idempotency_key": idempotency_key,
        "idempotency_hash": idempotency_hash,
        "pinned_relay_id": pinned_relay_id,
        "created_at": now,
        "updated_at": now,
    }
    try:
        new_id = group_commit(db.engine, _MESSAGES).insert(values)
    except IntegrityError:
        # Two requests raced with one Idempotency-Key: the first one stored wins.
        existing = _find_idempotent(api_key_id, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _replay(existing, idempotency_hash)
    log.info(
        "message queued",
        extra={
            "mid": new_id,
            "message_id": built.message_id,
            "status": QUEUED,
            "recipients": len(built.recipients),
            "bytes": len(built.data),
        },
    )
    return Enqueued(new_id, built.message_id, QUEUED)


def queued_event(message: Message) -> Event:
    """The first entry of a message's history, read from the message row itself.

    Enqueue writes the message row alone (it is the API's hot path, one row under the
    write lock); when the message was queued, for how many recipients and how big, is on
    that row, so no event row repeats it. The entry is never added to a session.
    """
    return Event(
        at=message.created_at,
        type="queued",
        message_id=message.id,
        detail=f"{len(message.recipients)} recipient(s), {message.size} bytes",
        relay_id=None,
        data=None,
    )


def history_events(message: Message) -> list[Event]:
    """The message's events, oldest first, beginning with its queued entry."""
    stored = db.session.scalars(
        select(Event).where(Event.message_id == message.id).order_by(Event.id)
    )
    return [queued_event(message), *stored]


_FIND_IDEMPOTENT = select(
    Message.id, Message.message_id, Message.status, Message.idempotency_hash
).where(Message.api_key_id == bindparam("api_key_id"), Message.idempotency_key == bindparam("key"))


def _find_idempotent(api_key_id: int | None, key: str) -> Any:
    with db.engine.connect() as conn:
        return conn.execute(_FIND_IDEMPOTENT, {"api_key_id": api_key_id, "key": key}).first()


def _replay(row: Any, digest: str | None) -> Enqueued:
    if row.idempotency_hash != digest:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body"
        )
    return Enqueued(row.id, row.message_id, row.status, replayed=True)


@dataclass
class Claimed:
    """A message claimed for delivery by one worker, under a lease."""

    id: int
    message_id: str
    envelope_from: str
    recipients: list[str]
    data: bytes
    priority: int
    attempt_count: int
    created_at: datetime
    pinned_relay_id: int | None = None
    unknown_outcomes: int = 0  # earlier attempts whose reply was lost after the final dot
    lease_until: float = 0.0  # time.monotonic() by which the claim's lease surely holds
    suppressed: dict[str, str] = field(default_factory=dict)  # recipient → why it is suppressed


_CLAIM_COLUMNS = (
    Message.pinned_relay_id,
    Message.id,
    Message.message_id,
    Message.envelope_from,
    Message.recipients,
    Message.pending_recipients,
    Message.data,
    Message.priority,
    Message.attempt_count,
    Message.unknown_outcomes,
    Message.created_at,
)


def due_query(limit: int, now: datetime | None = None) -> Any:
    """Select the ids of due messages, highest priority first, oldest first."""
    # next_attempt_at is set exactly while a message is queued or deferred, so this one
    # condition selects the claimable rows, in the order of ix_messages_due.
    return (
        select(Message.id)
        .where(Message.next_attempt_at <= (now or utcnow()))
        .order_by(Message.priority, Message.next_attempt_at)
        .limit(limit)
    )


def claim(conn: Connection, owner: str, limit: int, lease_seconds: float) -> list[Claimed]:
    """Claim up to `limit` due messages, highest priority first, in one atomic statement.

    On SQLite the UPDATE ... RETURNING runs under the database's single write lock;
    on PostgreSQL the inner SELECT skips rows another worker has locked.
    """
    now = utcnow()
    lease_until = time.monotonic() + lease_seconds
    due = due_query(limit, now).with_for_update(skip_locked=True)
    stmt = (
        update(Message)
        .where(Message.id.in_(due.scalar_subquery()))
        .values(
            status=SENDING,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            next_attempt_at=None,
            attempt_count=Message.attempt_count + 1,
            updated_at=now,
        )
        .returning(*_CLAIM_COLUMNS)
        .execution_options(synchronize_session=False)
    )
    rows = conn.execute(stmt).all()
    claimed = [
        Claimed(
            id=row.id,
            message_id=row.message_id,
            envelope_from=row.envelope_from,
            recipients=list(row.pending_recipients or row.recipients),
            data=row.data,
            priority=row.priority,
            attempt_count=row.attempt_count,
            created_at=row.created_at,
            pinned_relay_id=row.pinned_relay_id,
            unknown_outcomes=row.unknown_outcomes,
            lease_until=lease_until,
        )
        for row in rows
    ]
    claimed.sort(key=lambda m: (m.priority, m.id))
    return claimed


@dataclass(frozen=True)
class Outcome:
    """How one claimed message ended this pass, with what to record."""

    message: int
    status: str
    next_attempt_at: datetime | None = None
    pending_recipients: list[str] | None = None
    last_error: str | None = None
    relay_id: int | None = None
    sent_at: datetime | None = None
    unknown_outcomes: int = 0
    waiting_for_relay_id: int | None = None  # held or deferred for this relay
    attempted: bool = True  # False: the claim's count of an attempt is taken back
    attempts: tuple[AttemptRecord, ...] = ()
    events: tuple[EventRecord, ...] = ()


_FINISH = (
    _MESSAGES.update()
    .where(
        _MESSAGES.c.id == bindparam("b_id"),
        _MESSAGES.c.lease_owner == bindparam("b_owner"),
        _MESSAGES.c.status == SENDING,
    )
    .values(
        status=bindparam("b_status"),
        next_attempt_at=bindparam("b_next"),
        pending_recipients=bindparam("b_pending"),
        last_error=bindparam("b_error"),
        relay_id=bindparam("b_relay"),
        sent_at=bindparam("b_sent"),
        unknown_outcomes=bindparam("b_unknown"),
        waiting_for_relay_id=bindparam("b_waiting_for"),
        attempt_count=_MESSAGES.c.attempt_count - bindparam("b_unattempted"),
        updated_at=bindparam("b_now"),
        lease_owner=None,
        lease_expires_at=None,
    )
)


def finish(conn: Connection, owner: str, outcomes: list[Outcome]) -> int:
    """Record outcomes (attempts, events, new statuses) in one transaction; return rows updated.

    A message whose lease was lost (reaped and claimed elsewhere) keeps its new owner's
    state: its attempts and events are still recorded, so the history stays whole.
    """
    if not outcomes:
        return 0
    now = utcnow()
    attempts = [a.row() for o in outcomes for a in o.attempts]
    events = [e.row() for o in outcomes for e in o.events]
    if attempts:
        conn.execute(_INSERT_ATTEMPT, attempts)
    if events:
        conn.execute(_INSERT_EVENT, events)
    params = [
        {
            "b_id": o.message,
            "b_owner": owner,
            "b_status": o.status,
            "b_next": o.next_attempt_at,
            "b_pending": o.pending_recipients,
            "b_error": o.last_error,
            "b_relay": o.relay_id,
            "b_sent": o.sent_at,
            "b_unknown": o.unknown_outcomes,
            "b_waiting_for": o.waiting_for_relay_id,
            "b_unattempted": 0 if o.attempted else 1,
            "b_now": now,
        }
        for o in outcomes
    ]
    result = conn.execute(_FINISH, params)
    updated = result.rowcount
    held = [o.message for o in outcomes if o.status == HELD]
    if held:
        _unhold_if_over(conn, held, now)
    if updated != len(outcomes):
        log.warning(
            "lease lost before finish",
            extra={"expected": len(outcomes), "updated": updated, "owner": owner},
        )
    return updated


def _unhold_if_over(conn: Connection, ids: list[int], now: datetime) -> None:
    """Take messages just held out of the drain that released them (they wait for the
    relay's next end of maintenance), and queue again those held for a relay whose
    maintenance ended meanwhile (its end released what was held before; these came after)."""
    conn.execute(
        update(Message)
        .where(Message.id.in_(ids), Message.status == HELD, Message.drain_id.is_not(None))
        .values(drain_id=None)
        .execution_options(synchronize_session=False)
    )
    over = select(Relay.id).where(Relay.maintenance_since.is_(None))
    conn.execute(
        update(Message)
        .where(
            Message.id.in_(ids),
            Message.status == HELD,
            or_(Message.waiting_for_relay_id.is_(None), Message.waiting_for_relay_id.in_(over)),
        )
        .values(status=QUEUED, next_attempt_at=now, waiting_for_relay_id=None)
        .execution_options(synchronize_session=False)
    )


def release(conn: Connection, owner: str, ids: list[int], why: str) -> int:
    """Return claimed messages that were never attempted to the queue, due now.

    Their claim counted an attempt that did not happen: it is taken back. Only rows this
    owner still holds are touched; each gets an event saying why.
    """
    if not ids:
        return 0
    now = utcnow()
    released = list(
        conn.execute(
            update(Message)
            .where(Message.id.in_(ids), Message.lease_owner == owner, Message.status == SENDING)
            .values(
                status=QUEUED,
                next_attempt_at=now,
                attempt_count=Message.attempt_count - 1,
                lease_owner=None,
                lease_expires_at=None,
                updated_at=now,
            )
            .returning(Message.id)
            .execution_options(synchronize_session=False)
        ).scalars()
    )
    if released:
        conn.execute(
            insert(Event),
            [{"at": now, "type": "released", "message_id": mid, "detail": why} for mid in released],
        )
    return len(released)


def renew_leases(conn: Connection, owner: str, lease_seconds: float) -> int:
    """Extend the leases this owner still holds; return how many."""
    result = conn.execute(
        _MESSAGES.update()
        .where(_MESSAGES.c.lease_owner == owner, _MESSAGES.c.status == SENDING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    return int(result.rowcount or 0)


def reap_expired_leases(conn: Connection) -> list[int]:
    """Return messages whose lease expired to the queue, with an event each."""
    now = utcnow()
    rows = conn.execute(
        update(Message)
        .where(Message.status == SENDING, Message.lease_expires_at < now)
        .values(
            status=QUEUED,
            next_attempt_at=now,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    ).all()
    ids = [row.id for row in rows]
    if ids:
        conn.execute(
            insert(Event),
            [
                {
                    "at": now,
                    "type": "lease_expired",
                    "message_id": mid,
                    "detail": "the worker's lease expired; returned to the queue",
                }
                for mid in ids
            ],
        )
        for mid in ids:
            log.warning("lease expired", extra={"mid": mid, "status": QUEUED})
    return ids
