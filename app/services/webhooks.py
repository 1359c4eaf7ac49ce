"""ESP webhooks: verify and store on receipt (milliseconds), act on them off the request path.

`receive` checks the signature against every MailerSend relay's signing secret in
constant time (the secret that verifies names the relay), stores the event once (a
redelivery finds its key taken) and answers. `process_pending`, run every second by the
scheduler, acts on stored events: maintenance starts and ends; every other type is kept
as received and logged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from app import logs
from app.config import Settings
from app.crypto import SecretBox, SecretUnreadable
from app.db import db
from app.db.commit import group_commit
from app.domain import providers, webhooks
from app.domain.webhooks import MAINTENANCE_END, MAINTENANCE_START, WebhookError
from app.models import Attempt, Event, Message, Relay, WebhookEvent, utcnow
from app.services import maintenance, suppressions

log = logs.get("webhooks")

MAILERSEND = "mailersend"
BY = "webhook"


@dataclass(frozen=True)
class Receipt:
    """The answer to one webhook request."""

    status: int
    message: str
    event_id: int | None = None
    duplicate: bool = False


def _secrets(box: SecretBox) -> list[tuple[int, str]]:
    """Return (relay id, signing secret) of every MailerSend relay that has one.

    Read and decrypted at most once a second per process (SECRETS_FOR): reading and
    decrypting them for every webhook was a third of a webhook's CPU. A secret changed
    on the dashboard or the CLI takes effect in this process at once, in the others
    within that second.
    """
    now = time.monotonic()
    cached = _cache.get(id(box))
    if cached is not None and now - cached[0] < SECRETS_FOR:
        return cached[1]
    rows = db.session.execute(
        select(Relay.id, Relay.name, Relay.webhook_secret_encrypted).where(
            Relay.provider == MAILERSEND, Relay.webhook_secret_encrypted.is_not(None)
        )
    ).all()
    found = []
    for relay_id, name, token in rows:
        if token is None:
            continue
        try:
            found.append((relay_id, box.decrypt(token)))
        except SecretUnreadable:
            log.warning(
                "webhook secret unreadable",
                extra={"relay": name, "hint": "enter it again, or list the old secret key"},
            )
    _cache[id(box)] = (now, found)
    return found


SECRETS_FOR = 1.0
_cache: dict[int, tuple[float, list[tuple[int, str]]]] = {}


def forget_secrets() -> None:
    """Read the signing secrets afresh on the next webhook (a relay changed here)."""
    _cache.clear()


def _verify(body: bytes, given: str, box: SecretBox) -> int | None:
    """Return the id of the relay whose secret signed the body, or None."""
    signer = None
    for relay_id, secret in _secrets(box):  # every secret is tried: no early exit
        if providers.signed_by(secret, body, given) and signer is None:
            signer = relay_id
    return signer


def receive(body: bytes, signature: str | None, box: SecretBox) -> Receipt:
    """Verify, read and store one MailerSend webhook; nothing is stored unless it verifies."""
    if not signature:
        return Receipt(401, "the Signature header is missing")
    relay_id = _verify(body, signature, box)
    known = providers.PROVIDERS[MAILERSEND]
    test = (
        relay_id is None
        and known.test_secret is not None
        and providers.signed_by(known.test_secret, body, signature)
    )
    if relay_id is None and not test:
        return Receipt(401, "the signature matches no relay's webhook signing secret")
    try:
        incoming = webhooks.parse(body)
    except WebhookError as exc:
        return Receipt(400, str(exc))
    if test:
        if incoming.type != known.test_event:
            log.warning(
                "webhook refused: test secret on a real event", extra={"type": incoming.type}
            )
            return Receipt(401, f"the public test secret verifies {known.test_event} only")
        log.info("webhook test received", extra={"provider": MAILERSEND})
        return Receipt(200, "test received")
    values = {
        "dedup_key": f"{MAILERSEND}:{relay_id}:{incoming.identity}",
        "provider": MAILERSEND,
        "relay_id": relay_id,
        "type": incoming.type,
        "received_at": utcnow(),
        "body": body.decode("utf-8", "replace"),
        "processed_at": None,
        "result": None,
    }
    try:
        # Durable before the answer; webhooks arriving together share one commit.
        event_id = group_commit(db.engine, _EVENTS).insert(values)
    except IntegrityError:
        log.info("webhook redelivered", extra={"type": incoming.type, "relay_id": relay_id})
        return Receipt(200, "already received", duplicate=True)
    log.info(
        "webhook received", extra={"type": incoming.type, "relay_id": relay_id, "id": event_id}
    )
    return Receipt(200, "received", event_id=event_id)


_EVENTS = WebhookEvent.__table__


def process_pending(
    limit: int = 200, now: datetime | None = None, settings: Settings | None = None
) -> int:
    """Act on stored events not yet acted on, oldest first; return how many were handled.

    A batch is claimed in one statement (processed_at set where it was empty, so each
    event is taken by one process), acted on, and its results and timeline events
    written in one transaction. If acting fails, the batch's claim is undone and the
    next run retries it.
    """
    at = now or utcnow()
    claimed = (
        db.session.execute(
            update(WebhookEvent)
            .where(
                WebhookEvent.id.in_(
                    select(WebhookEvent.id)
                    .where(WebhookEvent.processed_at.is_(None))
                    .order_by(WebhookEvent.id)
                    .limit(limit)
                    .scalar_subquery()
                ),
                WebhookEvent.processed_at.is_(None),
            )
            .values(processed_at=at)
            .returning(WebhookEvent.id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    db.session.commit()
    if not claimed:
        return 0
    events = db.session.scalars(
        select(WebhookEvent).where(WebhookEvent.id.in_(claimed)).order_by(WebhookEvent.id)
    ).all()
    try:
        # Read first (matching events to messages), then write everything in one short
        # transaction: the write lock is held for the writes alone, not the lookups.
        activity = {
            e.id: webhooks.parse(e.body.encode()) for e in events if e.type.startswith("activity.")
        }
        matches = _matches(list(activity.values()))
        named = {e.relay_id for e in events if e.relay_id is not None}
        relays = {r.id: r for r in db.session.scalars(select(Relay).where(Relay.id.in_(named)))}
        done = [
            _act(event, relays.get(event.relay_id or 0), now, settings, matches, activity)
            for event in events
        ]
        timeline = [d.event for d in done if d.event is not None]
        if timeline:
            db.session.execute(insert(Event.__table__), timeline)
        results = [
            d.result + (_suppress(**d.suppress) if d.suppress is not None else "") for d in done
        ]
        db.session.execute(
            _EVENTS.update()
            .where(_EVENTS.c.id == bindparam("b_id"))
            .values(result=bindparam("b_result")),
            [{"b_id": e.id, "b_result": r} for e, r in zip(events, results, strict=True)],
        )
        db.session.commit()
    except Exception:
        db.session.rollback()
        db.session.execute(
            update(WebhookEvent).where(WebhookEvent.id.in_(claimed)).values(processed_at=None)
        )
        db.session.commit()
        raise
    unmatched = sum(1 for d in done if d.event is not None and d.event["message_id"] is None)
    log.info(
        "webhooks acted on",
        extra={"events": len(events), "activity": len(activity), "unmatched": unmatched},
    )
    return len(events)


@dataclass
class _Done:
    """What acting on one event came to, and what is left to write."""

    result: str
    event: dict[str, Any] | None = None  # a timeline event's row
    suppress: dict[str, Any] | None = None  # suppressions.suppress's arguments


def _act(
    event: WebhookEvent,
    relay: Relay | None,
    now: datetime | None,
    settings: Settings | None,
    matches: dict[str, int],
    activity: dict[int, webhooks.Incoming],
) -> _Done:
    """Act on one stored event (maintenance changes are written at once, being rare)."""
    if relay is None:
        return _Done("its relay no longer exists")
    if event.type == MAINTENANCE_START:
        started = maintenance.start(relay, BY, "MailerSend announced maintenance", now)
        return _Done("maintenance started" if started else "already in maintenance")
    if event.type == MAINTENANCE_END:
        released = maintenance.end(
            relay, BY, "MailerSend announced the end of maintenance", now, settings
        )
        if released is None:
            return _Done("was not in maintenance")
        return _Done(
            f"maintenance ended; {released.held} held, {released.deferred} deferred released"
        )
    if event.id in activity:
        return _activity(activity[event.id], relay, now, matches)
    log.info("webhook of an unknown type stored", extra={"type": event.type, "relay": relay.name})
    return _Done("stored")


def _matches(events: list[webhooks.Incoming]) -> dict[str, int]:
    """Map the ids activity events name to our messages, in two queries for a batch: the id
    a relay's 250 reply gave a message (kept on its attempt), else its Message-ID."""
    ids = {i for incoming in events for i in _ids(incoming)}
    if not ids:
        return {}
    found: dict[str, int] = {}
    rows = db.session.execute(
        select(Attempt.esp_id, Attempt.message_id)
        .where(Attempt.esp_id.in_(ids))
        .order_by(Attempt.id)
    )
    for esp_id, message_id in rows:
        if esp_id is not None:
            found[esp_id] = int(message_id)  # the latest attempt wins
    by_message_id = {f"<{i.strip('<>')}>": i for i in ids - found.keys()}
    if by_message_id:
        named = db.session.execute(
            select(Message.message_id, Message.id).where(Message.message_id.in_(by_message_id))
        )
        for header, pk in named:
            found[by_message_id[header]] = int(pk)
    return found


def _ids(incoming: webhooks.Incoming) -> list[str]:
    return [i for i in (incoming.email_id, incoming.message_id) if i]


def _activity(
    incoming: webhooks.Incoming, relay: Relay, now: datetime | None, matches: dict[str, int]
) -> _Done:
    """Plan an activity event's place on its message's timeline; a hard bounce suppresses."""
    kind = incoming.type.removeprefix("activity.")
    message_id = next((matches[i] for i in _ids(incoming) if i in matches), None)
    detail = f"{relay.name} reports {kind.replace('_', ' ')} for {incoming.email or '?'}"
    at = now or utcnow()
    row = {
        "at": at,
        "type": f"esp_{kind}"[:32] if message_id is not None else "esp_unmatched",
        "message_id": message_id,
        "relay_id": relay.id,
        "detail": detail if message_id is not None else f"{detail} (matches no message)",
        "data": {
            "esp_event": incoming.event_id,
            "email": incoming.email,
            "email_id": incoming.email_id,
            "esp_message_id": incoming.message_id,
            "type": kind,
        },
    }
    result = f"attached to message {message_id}" if message_id is not None else "unmatched"
    if kind != "hard_bounced" or not incoming.email:
        return _Done(result, row)
    suppress = {
        "address": incoming.email,
        "reason": f"hard bounce reported by {relay.name} on {at:%Y-%m-%d %H:%M} UTC",
        "source": f"{relay.provider} webhook",
        "relay_id": relay.id,
        "message_id": message_id,
        "now": at,
    }
    return _Done(result, row, suppress)


def _suppress(**values: Any) -> str:
    """Suppress an address within the batch's transaction; say what came of it."""
    try:
        new = suppressions.suppress(**values, commit=False)
    except ValueError as exc:
        return f"; not suppressed: {exc}"
    return "; address suppressed" if new else "; address already suppressed"
