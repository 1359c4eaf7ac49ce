"""ESP webhooks: verify and store on receipt (milliseconds), act on them off the request path.

`receive` checks the signature against every MailerSend relay's signing secret in
constant time (the secret that verifies names the relay), stores the event once (a
redelivery finds its key taken) and answers. `process_pending`, run every second by the
scheduler, acts on stored events: maintenance starts and ends; every other type is kept
as received and logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from app import logs
from app.config import Settings
from app.crypto import SecretBox, SecretUnreadable
from app.db import db
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
    """Return (relay id, signing secret) of every MailerSend relay that has one."""
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
    return found


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
    event = WebhookEvent(
        dedup_key=f"{MAILERSEND}:{relay_id}:{incoming.identity}",
        provider=MAILERSEND,
        relay_id=relay_id,
        type=incoming.type,
        received_at=utcnow(),
        body=body.decode("utf-8", "replace"),
    )
    db.session.add(event)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        log.info("webhook redelivered", extra={"type": incoming.type, "relay_id": relay_id})
        return Receipt(200, "already received", duplicate=True)
    log.info(
        "webhook received", extra={"type": incoming.type, "relay_id": relay_id, "id": event.id}
    )
    return Receipt(200, "received", event_id=event.id)


def process_pending(
    limit: int = 100, now: datetime | None = None, settings: Settings | None = None
) -> int:
    """Act on stored events not yet acted on, oldest first; return how many were handled.

    Each event is claimed by one process (its processed_at set where it was empty)
    before it is acted on; if acting fails the claim is undone and the next run retries.
    """
    pending = db.session.scalars(
        select(WebhookEvent)
        .where(WebhookEvent.processed_at.is_(None))
        .order_by(WebhookEvent.id)
        .limit(limit)
    ).all()
    handled = 0
    for event in pending:
        claimed = db.session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event.id, WebhookEvent.processed_at.is_(None))
            .values(processed_at=now or utcnow())
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        if not getattr(claimed, "rowcount", 0):
            continue  # another process took it
        try:
            result = _act(event, now, settings)
        except Exception:
            db.session.rollback()
            db.session.execute(
                update(WebhookEvent).where(WebhookEvent.id == event.id).values(processed_at=None)
            )
            db.session.commit()
            raise
        db.session.execute(
            update(WebhookEvent).where(WebhookEvent.id == event.id).values(result=result)
        )
        db.session.commit()
        handled += 1
    return handled


def _act(event: WebhookEvent, now: datetime | None, settings: Settings | None) -> str:
    """Act on one stored event; return what was done."""
    relay = db.session.get(Relay, event.relay_id) if event.relay_id is not None else None
    if relay is None:
        return "its relay no longer exists"
    if event.type == MAINTENANCE_START:
        started = maintenance.start(relay, BY, "MailerSend announced maintenance", now)
        return "maintenance started" if started else "already in maintenance"
    if event.type == MAINTENANCE_END:
        released = maintenance.end(
            relay, BY, "MailerSend announced the end of maintenance", now, settings
        )
        if released is None:
            return "was not in maintenance"
        return f"maintenance ended; {released.held} held, {released.deferred} deferred released"
    if event.type.startswith("activity."):
        return _activity(event, relay, now)
    log.info("webhook of an unknown type stored", extra={"type": event.type, "relay": relay.name})
    return "stored"


def _match(incoming: webhooks.Incoming) -> int | None:
    """Find our message an activity event is about: by the id the relay's 250 reply gave it
    (kept on the attempt), else by its Message-ID."""
    ids = [i for i in (incoming.email_id, incoming.message_id) if i]
    if not ids:
        return None
    found = db.session.scalar(
        select(Attempt.message_id).where(Attempt.esp_id.in_(ids)).order_by(Attempt.id.desc())
    )
    if found is None:
        candidates = [f"<{i.strip('<>')}>" for i in ids]
        found = db.session.scalar(select(Message.id).where(Message.message_id.in_(candidates)))
    return int(found) if found is not None else None


def _activity(event: WebhookEvent, relay: Relay, now: datetime | None) -> str:
    """Attach an activity event to its message's timeline; a hard bounce suppresses."""
    incoming = webhooks.parse(event.body.encode())
    kind = incoming.type.removeprefix("activity.")
    message_id = _match(incoming)
    detail = f"{relay.name} reports {kind.replace('_', ' ')} for {incoming.email or '?'}"
    at = now or utcnow()
    db.session.add(
        Event(
            at=at,
            type=f"esp_{kind}"[:32] if message_id is not None else "esp_unmatched",
            message_id=message_id,
            relay_id=relay.id,
            detail=detail if message_id is not None else f"{detail} (matches no message)",
            data={
                "esp_event": incoming.event_id,
                "email": incoming.email,
                "email_id": incoming.email_id,
                "esp_message_id": incoming.message_id,
                "type": kind,
            },
        )
    )
    db.session.commit()
    result = f"attached to message {message_id}" if message_id is not None else "unmatched"
    if kind == "hard_bounced" and incoming.email:
        try:
            new = suppressions.suppress(
                incoming.email,
                f"hard bounce reported by {relay.name} on {at:%Y-%m-%d %H:%M} UTC",
                f"{relay.provider} webhook",
                relay_id=relay.id,
                message_id=message_id,
                now=at,
            )
        except ValueError as exc:
            return f"{result}; not suppressed: {exc}"
        result += "; address suppressed" if new else "; address already suppressed"
    log.info("esp event", extra={"type": kind, "relay": relay.name, "mid": message_id})
    return result
