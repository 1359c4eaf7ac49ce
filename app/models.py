"""Typed SQLAlchemy 2.0 models. Lean: no HTTP serialisation here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import db


def utcnow() -> datetime:
    """Return the current UTC time, naive (every timestamp in the database is naive UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


PRIORITIES = {"high": 0, "normal": 1, "low": 2}
PRIORITY_NAMES = {value: name for name, value in PRIORITIES.items()}

# Message statuses. A message is claimable iff next_attempt_at is set (queued or deferred).
QUEUED, SENDING, DEFERRED, HELD, SENT, FAILED, LOGGED, CANCELLED = (
    "queued",
    "sending",
    "deferred",
    "held",
    "sent",
    "failed",
    "logged",
    "cancelled",
)
STATUSES = (QUEUED, SENDING, DEFERRED, HELD, SENT, FAILED, LOGGED, CANCELLED)


class Relay(db.Model):  # type: ignore[name-defined]
    """An SMTP relay (smarthost) mail can be delivered through."""

    __tablename__ = "relays"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    security: Mapped[str] = mapped_column(String(16), default="starttls")
    tls_verify: Mapped[bool] = mapped_column(Boolean, default=True)
    username: Mapped[str | None] = mapped_column(String(255))
    password_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    priority: Mapped[int] = mapped_column(Integer, default=10)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    weight: Mapped[int] = mapped_column(Integer, default=1)
    provider: Mapped[str] = mapped_column(String(32), default="generic")
    max_per_connection: Mapped[int] = mapped_column(Integer, default=100)
    max_rate: Mapped[float | None] = mapped_column(Float)  # messages per second
    maintenance_policy: Mapped[str] = mapped_column(String(16), default="reroute")
    breaker_threshold: Mapped[int] = mapped_column(Integer, default=3)
    breaker_open_seconds: Mapped[int] = mapped_column(Integer, default=1800)
    breaker_success_threshold: Mapped[int] = mapped_column(Integer, default=1)
    # How often a message whose reply was lost after the final dot is sent again through
    # this relay before it fails with "outcome unknown" (the relay may have it already).
    unknown_retries: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    # The ESP's webhook signing secret (provider mailersend), sealed like the password.
    webhook_secret_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)

    # Set while the relay is in maintenance: since when, why, and who or what said so
    # ("webhook", "operator a@b.c", "cli", "reply", "plan 3").
    maintenance_since: Mapped[datetime | None] = mapped_column(DateTime)
    maintenance_reason: Mapped[str | None] = mapped_column(Text)
    maintenance_by: Mapped[str | None] = mapped_column(String(128))

    circuit_state: Mapped[str] = mapped_column(String(16), default="closed")
    circuit_failures: Mapped[int] = mapped_column(Integer, default=0)
    circuit_successes: Mapped[int] = mapped_column(Integer, default=0)
    circuit_open_until: Mapped[datetime | None] = mapped_column(DateTime)
    circuit_reason: Mapped[str | None] = mapped_column(Text)
    circuit_changed_at: Mapped[datetime | None] = mapped_column(DateTime)
    cooldown_until: Mapped[datetime | None] = mapped_column(DateTime)

    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_duration_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class ApiKey(db.Model):  # type: ignore[name-defined]
    """A key an application sends mail with; only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # send: sends, and reads only the messages it sent; read-all: also reads every message.
    scope: Mapped[str] = mapped_column(String(16), default="send", server_default="send")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class Message(db.Model):  # type: ignore[name-defined]
    """One outbound message, stored durably from enqueue until it ends."""

    __tablename__ = "messages"
    __table_args__ = (
        # The claim's WHERE and ORDER BY, served by one small partial index.
        Index(
            "ix_messages_due",
            "priority",
            "next_attempt_at",
            sqlite_where=text("next_attempt_at IS NOT NULL"),
            postgresql_where=text("next_attempt_at IS NOT NULL"),
        ),
        Index("ix_messages_status_created", "status", "created_at"),
        # A drain's messages: the next to release (held, by priority then age) and its counts.
        Index(
            "ix_messages_drain",
            "drain_id",
            "status",
            "priority",
            "created_at",
            sqlite_where=text("drain_id IS NOT NULL"),
            postgresql_where=text("drain_id IS NOT NULL"),
        ),
        # Mail held or deferred for a relay, released when its maintenance ends.
        Index(
            "ix_messages_waiting_for",
            "waiting_for_relay_id",
            "priority",
            "created_at",
            sqlite_where=text("waiting_for_relay_id IS NOT NULL"),
            postgresql_where=text("waiting_for_relay_id IS NOT NULL"),
        ),
        # A key's own messages, newest first (GET /api/messages).
        Index("ix_messages_api_key", "api_key_id", "id"),
        Index(
            "ix_messages_lease",
            "lease_expires_at",
            sqlite_where=text("status = 'sending'"),
            postgresql_where=text("status = 'sending'"),
        ),
        # Partial: most messages carry no key, and need no entry in this index.
        Index(
            "uq_messages_idempotency",
            "api_key_id",
            "idempotency_key",
            unique=True,
            sqlite_where=text("idempotency_key IS NOT NULL"),
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(String(255))
    envelope_from: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[list[str]] = mapped_column(JSON)
    # Recipients still to deliver after a partial success; None means all of them.
    pending_recipients: Mapped[list[str] | None] = mapped_column(JSON)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(Text, default="")
    from_header: Mapped[str] = mapped_column(Text, default="")
    to_header: Mapped[list[str]] = mapped_column(JSON, default=list)
    priority: Mapped[int] = mapped_column(Integer, default=1)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    # Attempts whose reply was lost after the final dot (bounded by the relay's unknown_retries).
    unknown_outcomes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    idempotency_hash: Mapped[str | None] = mapped_column(String(64))
    relay_id: Mapped[int | None] = mapped_column(ForeignKey("relays.id", ondelete="SET NULL"))
    # Set for an operator's "send test email": only this relay may carry the message.
    pinned_relay_id: Mapped[int | None] = mapped_column(
        ForeignKey("relays.id", ondelete="SET NULL")
    )
    # The relay a held or deferred message waits for: its end of maintenance releases it.
    waiting_for_relay_id: Mapped[int | None] = mapped_column(
        ForeignKey("relays.id", ondelete="SET NULL")
    )
    # The drain that releases it (held until the drain's pace lets it out).
    drain_id: Mapped[int | None] = mapped_column(ForeignKey("drains.id", ondelete="SET NULL"))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)

    relay: Mapped[Relay | None] = relationship(foreign_keys=[relay_id])


class Attempt(db.Model):  # type: ignore[name-defined]
    """One try of one message through one relay."""

    __tablename__ = "attempts"
    __table_args__ = (
        Index("ix_attempts_message", "message_id"),
        # Per-relay sends and failures over recent minutes (relays table, overview chart).
        Index("ix_attempts_at", "at", "relay_id", "outcome"),
        Index(
            "ix_attempts_esp_id",
            "esp_id",
            sqlite_where=text("esp_id IS NOT NULL"),
            postgresql_where=text("esp_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    relay_id: Mapped[int | None] = mapped_column(ForeignKey("relays.id", ondelete="SET NULL"))
    relay_name: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str | None] = mapped_column(String(16))
    code: Mapped[int | None] = mapped_column(Integer)
    enhanced_status: Mapped[str | None] = mapped_column(String(16))
    response: Mapped[str | None] = mapped_column(Text)
    recipients: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    # The id the relay's 250 reply gave the message ("queued as …"): its webhooks name it.
    esp_id: Mapped[str | None] = mapped_column(String(255))


class Event(db.Model):  # type: ignore[name-defined]
    """A transition: of a message, a failover, or a circuit."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_message", "message_id"),
        Index("ix_events_type_at", "type", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    type: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    relay_id: Mapped[int | None] = mapped_column(ForeignKey("relays.id", ondelete="SET NULL"))
    detail: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Drain(db.Model):  # type: ignore[name-defined]
    """The paced release of a backlog of held mail, highest priority first."""

    __tablename__ = "drains"
    __table_args__ = (Index("ix_drains_state", "state", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    relay_id: Mapped[int | None] = mapped_column(ForeignKey("relays.id", ondelete="SET NULL"))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(16), default="running")  # paused, cancelled, done
    backlog: Mapped[int] = mapped_column(Integer, default=0)  # messages at the start
    released: Mapped[int] = mapped_column(Integer, default=0)
    # The ramp's allowance not yet used (capped at its burst), as of `refilled_run`
    # seconds of running: a token bucket, so a gap in releasing is no burst after it.
    tokens: Mapped[float] = mapped_column(Float, default=0.0)
    refilled_run: Mapped[float] = mapped_column(Float, default=0.0)
    initial_rate: Mapped[float] = mapped_column(Float)
    factor: Mapped[float] = mapped_column(Float)
    step_seconds: Mapped[float] = mapped_column(Float)
    max_rate: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Seconds spent running before resumed_at (a pause stops the ramp's clock).
    run_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    resumed_at: Mapped[datetime | None] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)

    relay: Mapped[Relay | None] = relationship()


class Switch(db.Model):  # type: ignore[name-defined]
    """A global switch an operator turns (the pause of all delivery): who, why, since when."""

    __tablename__ = "switches"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    since: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    by: Mapped[str] = mapped_column(String(128), default="")
    note: Mapped[str] = mapped_column(Text, default="")


class MaintenanceWindow(db.Model):  # type: ignore[name-defined]
    """A planned maintenance of a relay: it starts and ends by itself."""

    __tablename__ = "maintenance_windows"
    __table_args__ = (Index("ix_maintenance_windows_state", "state", "starts_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    relay_id: Mapped[int] = mapped_column(ForeignKey("relays.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime] = mapped_column(DateTime)
    ends_at: Mapped[datetime] = mapped_column(DateTime)
    note: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default="planned")  # active, done, cancelled

    relay: Mapped[Relay] = relationship()


class WebhookEvent(db.Model):  # type: ignore[name-defined]
    """A webhook an ESP sent, stored as received and acted on off the request path."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_pending", "processed_at", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # The same event delivered twice has the same key: relay and the event's id, or a
    # digest of the raw body for events without one.
    dedup_key: Mapped[str] = mapped_column(String(128), unique=True)
    provider: Mapped[str] = mapped_column(String(32))
    relay_id: Mapped[int | None] = mapped_column(ForeignKey("relays.id", ondelete="SET NULL"))
    type: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    body: Mapped[str] = mapped_column(Text)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime)
    result: Mapped[str | None] = mapped_column(Text)


class Suppression(db.Model):  # type: ignore[name-defined]
    """An address mail is no longer sent to (a hard bounce said it does not exist)."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)  # lower-cased
    reason: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(128), default="")  # e.g. "mailersend webhook"
    relay_id: Mapped[int | None] = mapped_column(ForeignKey("relays.id", ondelete="SET NULL"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class JobLease(db.Model):  # type: ignore[name-defined]
    """A lease row a singleton job takes so that one instance runs it."""

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class HealthCheck(db.Model):  # type: ignore[name-defined]
    """One health probe of a relay: connect, EHLO, STARTTLS, AUTH, with timings."""

    __tablename__ = "health_checks"
    __table_args__ = (Index("ix_health_checks_relay_at", "relay_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    relay_id: Mapped[int] = mapped_column(ForeignKey("relays.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ok: Mapped[bool] = mapped_column(Boolean)
    response_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    trigger: Mapped[str] = mapped_column(String(16), default="schedule")  # schedule | operator


class Operator(db.Model):  # type: ignore[name-defined]
    """A person who runs Relayboard from the dashboard."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime)

    # Flask-Login's user protocol.
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        """Return the session identifier of this operator."""
        return str(self.id)
