"""Read an ESP's webhook body: its type, its identity for deduplication, and what it says.

MailerSend sends two shapes. Current: `{"type", "created_at": "2025-08-05 22:27:14",
"data": {...}}`, where maintenance events carry `data.domain_id` and activity events
`data.id`, `message_id`, `email_id`, `type`, `email`, `tags`. Legacy: `{"type",
"domain_id", "created_at", "webhook_id", "url", "data": {"object": "activity", "id",
"type", "email": {"id", "message": {"id"}, "recipient": {"email"}, "status", ...}}}`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

MAX_BODY_BYTES = 256 * 1024
MAINTENANCE_START, MAINTENANCE_END = "maintenance.start", "maintenance.end"


class WebhookError(ValueError):
    """The body is not a webhook we can read; the message says why."""


@dataclass(frozen=True)
class Incoming:
    """What one webhook says."""

    type: str
    event_id: str | None  # the ESP's id of the event, when it has one (activity events)
    digest: str  # SHA-256 of the raw body: the identity of events without an id
    domain_id: str | None = None
    email: str | None = None  # the recipient an activity event is about
    email_id: str | None = None  # the ESP's id of the email (what its 250 reply named)
    message_id: str | None = None  # the ESP's id of the message

    @property
    def identity(self) -> str:
        """What a redelivery of this event shares with it."""
        return f"id:{self.event_id}" if self.event_id else f"sha256:{self.digest}"


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, int)) and str(value) else None


def parse(body: bytes) -> Incoming:
    """Read a MailerSend webhook body (either shape), or raise WebhookError saying why."""
    if len(body) > MAX_BODY_BYTES:
        raise WebhookError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookError(f"the body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise WebhookError("the body is not a JSON object")
    kind = payload.get("type")
    if not isinstance(kind, str) or not kind or len(kind) > 64:
        raise WebhookError("the body has no `type` (a string of at most 64 characters)")
    data = payload.get("data")
    data = data if isinstance(data, dict) else {}
    digest = hashlib.sha256(body).hexdigest()
    domain_id = _text(data.get("domain_id")) or _text(payload.get("domain_id"))
    if not kind.startswith("activity."):
        return Incoming(type=kind, event_id=None, digest=digest, domain_id=domain_id)
    email = data.get("email")
    if isinstance(email, dict):  # legacy: data.email is an object
        recipient = email.get("recipient")
        message = email.get("message")
        return Incoming(
            type=kind,
            event_id=_text(data.get("id")),
            digest=digest,
            domain_id=domain_id,
            email=_text(recipient.get("email")) if isinstance(recipient, dict) else None,
            email_id=_text(email.get("id")),
            message_id=_text(message.get("id")) if isinstance(message, dict) else None,
        )
    return Incoming(
        type=kind,
        event_id=_text(data.get("id")),
        digest=digest,
        domain_id=domain_id,
        email=_text(email),
        email_id=_text(data.get("email_id")),
        message_id=_text(data.get("message_id")),
    )
