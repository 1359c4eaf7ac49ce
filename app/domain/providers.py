"""What Relayboard knows of particular ESPs, in one table: how each one signs its webhooks,
announces maintenance in its SMTP replies, and bounds the messages of one connection.

A relay's `provider` names its row; `generic` (and any provider without a row) gets none
of this knowledge, and DESIGN.md's reply table applies unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import StrEnum


class ReplyMeaning(StrEnum):
    """What a provider means by a reply beyond its code."""

    MAINTENANCE = "maintenance"  # the relay is in maintenance: hold or reroute by policy
    RECYCLE = "recycle"  # the session carried all it may: a fresh one, not a failure


@dataclass(frozen=True)
class Provider:
    """One ESP's habits."""

    name: str
    # A 421 whose text matches this means the ESP is in maintenance.
    maintenance_reply: re.Pattern[str] | None = None
    # Messages one connection may carry; a 421 after that many is a request to reconnect.
    messages_per_connection: int | None = None
    # Webhooks: the header holding hex HMAC-SHA256 of the raw body with the signing secret.
    signature_header: str | None = None
    # A published secret the ESP signs its test ping with, and the only type it may verify.
    test_secret: str | None = None
    test_event: str | None = None


PROVIDERS: dict[str, Provider] = {
    "mailersend": Provider(
        name="mailersend",
        # "421 Service isn't available, try again later" (MailerSend's maintenance guide).
        maintenance_reply=re.compile(r"service (isn't|is not) available", re.IGNORECASE),
        messages_per_connection=5,
        signature_header="Signature",
        test_secret="test_Am3L1GuOIc4blLUuHqAPxxwkZaJyEk8G",
        test_event="webhook.test",
    ),
}


def of(name: str) -> Provider | None:
    """Return what is known of a provider, or None."""
    return PROVIDERS.get(name)


def reply_meaning(provider: str, code: int | None, text: str, carried: int) -> ReplyMeaning | None:
    """Say what a provider means by a reply, given how many messages the session had
    carried before it; None when the reply means what DESIGN.md's table says.

    MailerSend answers 421 both in maintenance and once a connection has carried more
    messages than it allows: the text tells maintenance apart, the count the other.
    """
    known = PROVIDERS.get(provider)
    if known is None or code != 421:
        return None
    if known.maintenance_reply is not None and known.maintenance_reply.search(text or ""):
        return ReplyMeaning.MAINTENANCE
    if known.messages_per_connection is not None and carried >= known.messages_per_connection:
        return ReplyMeaning.RECYCLE
    return None


def signature(secret: str, body: bytes) -> str:
    """Return the hex HMAC-SHA256 of a raw body: how MailerSend signs a webhook."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_by(secret: str, body: bytes, given: str) -> bool:
    """Say, in constant time, whether `given` is the body's signature under `secret`."""
    return hmac.compare_digest(signature(secret, body).encode(), given.strip().lower().encode())
