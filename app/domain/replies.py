"""Classify SMTP replies and connection errors into delivery actions (DESIGN.md, "SMTP replies")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from app.domain.providers import ReplyMeaning

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_THROTTLE_WORDS = re.compile(r"rate|throttl|too many|slow down|exceeded|quota", re.IGNORECASE)


class Action(StrEnum):
    """What the delivery engine does with an outcome."""

    DELIVERED = "delivered"
    FAILOVER = "failover"  # server-level: try the next relay now; a breaker failure
    THROTTLED = "throttled"  # cool the server down, fail over, retry later
    AUTH_FAILED = "auth_failed"  # open the circuit at once, alert, fail over
    UNSUPPORTED = "unsupported"  # the relay lacks a capability the message needs: next relay
    RETRY = "retry"  # this message on this server: back off and retry
    REJECT = "reject"  # permanent for the recipient(s): no failover
    UNKNOWN = "unknown"  # reply lost after the final dot: the relay may have it
    MAINTENANCE = "maintenance"  # the provider says it is in maintenance: hold or reroute
    RECYCLE = "recycle"  # the session carried all the provider allows: send on a fresh one


class Scope(StrEnum):
    """Whom a verdict concerns."""

    SERVER = "server"
    MESSAGE = "message"
    RECIPIENT = "recipient"


@dataclass(frozen=True)
class Verdict:
    """The classification of one reply or error."""

    action: Action
    scope: Scope
    reason: str

    @property
    def breaker_failure(self) -> bool:
        """Say whether this outcome counts against the relay's circuit."""
        return self.action in (Action.FAILOVER, Action.AUTH_FAILED)

    @property
    def fails_over(self) -> bool:
        """Say whether the message should try the next relay in the same pass."""
        return self.action in (
            Action.FAILOVER,
            Action.THROTTLED,
            Action.AUTH_FAILED,
            Action.UNSUPPORTED,
            Action.MAINTENANCE,
        )


_QUEUED_AS = re.compile(
    r"(?:queued as|\bid[=:])\s*<?([A-Za-z0-9][A-Za-z0-9._@-]{2,200})>?", re.IGNORECASE
)


def queued_id(text: str) -> str | None:
    """Return the id a relay's 250 gave the message ("250 2.0.0 Ok: queued as ABC123",
    "250 OK id=ABC123"): what its delivery webhooks later name the message by."""
    match = _QUEUED_AS.search(text or "")
    return match.group(1) if match else None


def enhanced_status(text: str) -> str | None:
    """Return the RFC 3463 enhanced status code at the start of a reply text, if any."""
    match = _ENHANCED.match(text or "")
    return ".".join(match.groups()) if match else None


def classify_reply(
    code: int, text: str, *, stage: str = "data", meaning: ReplyMeaning | None = None
) -> Verdict:
    """Classify an SMTP reply code and text given at a transaction stage.

    `meaning` is what the relay's provider means by it beyond its code
    (app/domain/providers.py); without one, DESIGN.md's table applies.
    """
    summary = f"{code} {text}".strip()
    if meaning == ReplyMeaning.MAINTENANCE:
        return Verdict(Action.MAINTENANCE, Scope.SERVER, f"in maintenance: {summary}")
    if meaning == ReplyMeaning.RECYCLE:
        return Verdict(Action.RECYCLE, Scope.SERVER, f"the session carried all it may: {summary}")
    if 200 <= code < 400:
        return Verdict(Action.DELIVERED, Scope.MESSAGE, summary)
    status = enhanced_status(text)
    klass, subject = (status.split(".")[0], status.split(".")[1]) if status else ("", "")
    if code == 535 or status == "5.7.8" or (stage == "auth" and code >= 500):
        return Verdict(Action.AUTH_FAILED, Scope.SERVER, f"authentication failed: {summary}")
    if code == 421 or (klass == "4" and subject in ("3", "4")):
        return Verdict(Action.FAILOVER, Scope.SERVER, f"service unavailable: {summary}")
    if 400 <= code < 500:
        # 4.7.x is the relay pacing us; words count only without an enhanced code, since
        # "452 4.2.2 over quota" is a full mailbox, not a relay that wants us slower.
        if (klass == "4" and subject == "7") or (not status and _THROTTLE_WORDS.search(text or "")):
            return Verdict(Action.THROTTLED, Scope.SERVER, f"throttled: {summary}")
        return Verdict(Action.RETRY, Scope.MESSAGE, f"temporary failure: {summary}")
    if (klass == "5" and subject == "7") or (code == 554 and not status):
        return Verdict(Action.FAILOVER, Scope.SERVER, f"refused by policy: {summary}")
    if stage in ("connect", "ehlo", "starttls"):
        return Verdict(Action.FAILOVER, Scope.SERVER, f"server refused the session: {summary}")
    scope = Scope.RECIPIENT if stage == "rcpt" else Scope.MESSAGE
    return Verdict(Action.REJECT, scope, f"rejected: {summary}")


def classify_connection_error(kind: str, detail: str) -> Verdict:
    """Classify a failure to reach or keep a session (refused, timeout, reset, TLS, lost)."""
    if kind == "capability":
        return Verdict(Action.UNSUPPORTED, Scope.SERVER, detail)
    if kind == "lost_after_data":
        return Verdict(
            Action.UNKNOWN,
            Scope.MESSAGE,
            f"outcome unknown: the connection was lost after the message was sent ({detail})",
        )
    return Verdict(Action.FAILOVER, Scope.SERVER, f"{kind.replace('_', ' ')}: {detail}")
