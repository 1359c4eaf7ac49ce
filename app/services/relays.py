"""Relays: create, change, order, and their transport endpoints and circuits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy import update as sql_update

from app.crypto import SecretBox, SecretUnreadable
from app.db import db
from app.domain import breaker
from app.domain.breaker import BreakerPolicy, Circuit, CircuitState, Transition
from app.models import HELD, QUEUED, Attempt, HealthCheck, Message, Relay, utcnow
from app.services import circuits
from app.services.records import EventRecord
from app.transport.smtp import SECURITY_MODES, Endpoint

# "log" is test mode: mail routed to it is logged, not sent (status "logged").
PROVIDERS = ("generic", "mailersend", "sendgrid", "mailgun", "ses", "postfix", "log")
MAINTENANCE_POLICIES = ("hold", "reroute")
# Attempt outcomes that count as delivered through the relay ("logged": the test-mode relay).
DELIVERED_OUTCOMES = ("sent", "partial", "logged")
# Circuit states an operator may force.
FORCEABLE = (CircuitState.OPEN.value, CircuitState.CLOSED.value)


class RelayError(ValueError):
    """A relay cannot be stored or changed as asked; the message says why."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # the form field at fault, when there is one


@dataclass(frozen=True)
class RelayStats:
    """What a relay carried in a recent window: delivered and failed attempts."""

    sent: int = 0
    failed: int = 0


@dataclass(frozen=True)
class RelaySnapshot:
    """What a delivery pass needs of a relay, read once."""

    endpoint: Endpoint
    priority: int
    weight: int
    enabled: bool
    provider: str
    max_rate: float | None
    policy: BreakerPolicy
    circuit: Circuit
    circuit_changed_at: datetime | None
    cooldown_until: datetime | None
    unknown_retries: int = 3
    unusable: str | None = None  # why no message can go through it, e.g. an unreadable secret
    maintenance: str | None = None  # why it is in maintenance, while it is
    maintenance_policy: str = "reroute"  # hold | reroute: its first-choice mail meanwhile


def ordered() -> list[Relay]:
    """Return every relay in priority order."""
    return list(db.session.scalars(select(Relay).order_by(Relay.priority, Relay.name)))


def get(name: str) -> Relay:
    """Return the relay with that name, or raise RelayError."""
    relay = db.session.scalar(select(Relay).where(Relay.name == name))
    if relay is None:
        raise RelayError(f"no relay named {name!r}")
    return relay


def validate(values: dict[str, Any]) -> None:
    """Refuse values a relay cannot have, with a message that says which and why."""
    name = values.get("name")
    if name is not None and not (1 <= len(name) <= 64) or (name and not name.strip()):
        raise RelayError("name must be 1 to 64 characters", "name")
    host = values.get("host")
    if host is not None and (not host or len(host) > 255 or any(c.isspace() for c in host)):
        raise RelayError(f"host {host!r} is not a host name or address", "host")
    port = values.get("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise RelayError(f"port {port} is out of range (1-65535)", "port")
    if values.get("security") not in (None, *SECURITY_MODES):
        raise RelayError(f"security must be one of {', '.join(SECURITY_MODES)}", "security")
    if values.get("provider") not in (None, *PROVIDERS):
        raise RelayError(f"provider must be one of {', '.join(PROVIDERS)}", "provider")
    if values.get("maintenance_policy") not in (None, *MAINTENANCE_POLICIES):
        raise RelayError("maintenance policy must be hold or reroute", "maintenance_policy")
    for key, low in (
        ("weight", 0),
        ("unknown_retries", 0),
        ("max_per_connection", 1),
        ("breaker_threshold", 1),
        ("breaker_open_seconds", 1),
        ("breaker_success_threshold", 1),
    ):
        if values.get(key) is not None and int(values[key]) < low:
            raise RelayError(f"{key.replace('_', ' ')} must be at least {low}", key)
    for key in ("username", "password"):
        value = values.get(key)
        if value and any(c in value for c in "\r\n\0"):
            raise RelayError(f"{key} must not contain line breaks", key)
    secret = values.get("webhook_secret")
    if secret and (not 8 <= len(secret) <= 256 or any(c.isspace() or c == "\0" for c in secret)):
        raise RelayError(
            "webhook secret must be 8 to 256 characters without spaces or line breaks",
            "webhook_secret",
        )


def create(box: SecretBox, **values: Any) -> Relay:
    """Add a relay; the password is sealed in `box` before it is stored."""
    validate(values)
    if db.session.scalar(select(Relay.id).where(Relay.name == values["name"])):
        raise RelayError(f"a relay named {values['name']!r} already exists", "name")
    password = values.pop("password", None)
    webhook_secret = values.pop("webhook_secret", None)
    if values.get("priority") is None:
        last = db.session.scalar(select(Relay.priority).order_by(Relay.priority.desc()))
        values["priority"] = (last or 0) + 10
    relay = Relay(**{k: v for k, v in values.items() if v is not None})
    if password:
        relay.password_encrypted = box.encrypt(password)
    if webhook_secret:
        relay.webhook_secret_encrypted = box.encrypt(webhook_secret)
    db.session.add(relay)
    db.session.commit()
    _secrets_changed()
    return relay


def _secrets_changed() -> None:
    """A relay's provider or webhook secret may have changed: webhooks read them afresh."""
    from app.services import webhooks  # webhooks reads relays; relays only tells it

    webhooks.forget_secrets()


def get_by_id(relay_id: int) -> Relay | None:
    """Return the relay with that id, or None."""
    return db.session.get(Relay, relay_id)


def update(relay: Relay, box: SecretBox | None = None, **values: Any) -> Relay:
    """Change a relay; a blank password keeps the stored one, a blank username drops both.

    A new password or webhook secret is sealed in `box`, which only such a change needs;
    a blank webhook secret keeps the stored one.
    """
    validate(values)
    name = values.get("name")
    if name is not None and name != relay.name:
        taken = select(Relay.id).where(Relay.name == name, Relay.id != relay.id)
        if db.session.scalar(taken):
            raise RelayError(f"a relay named {name!r} already exists", "name")
    password = values.pop("password", None)
    webhook_secret = values.pop("webhook_secret", None)
    if (password or webhook_secret) and box is None:
        raise ValueError("a new secret needs the secret box to be sealed in")
    for key, value in values.items():
        setattr(relay, key, value)
    if "username" in values and not values["username"]:
        relay.password_encrypted = None  # no username, no login: keep no orphaned secret
    elif password and box is not None:
        relay.password_encrypted = box.encrypt(password)
    if webhook_secret and box is not None:
        relay.webhook_secret_encrypted = box.encrypt(webhook_secret)
    db.session.commit()
    _secrets_changed()
    return relay


def remove(relay: Relay) -> None:
    """Delete a relay (messages and attempts keep its name); mail held for it is queued."""
    db.session.execute(
        sql_update(Message)
        .where(Message.waiting_for_relay_id == relay.id, Message.status == HELD)
        .values(status=QUEUED, next_attempt_at=utcnow(), waiting_for_relay_id=None)
        .execution_options(synchronize_session=False)
    )
    db.session.delete(relay)
    db.session.commit()
    _secrets_changed()


def endpoint(relay: Relay, box: SecretBox) -> Endpoint:
    """Return the transport endpoint of a relay, its password decrypted (SecretUnreadable)."""
    password = box.decrypt(relay.password_encrypted) if relay.password_encrypted else None
    return Endpoint(
        id=relay.id,
        name=relay.name,
        host=relay.host,
        port=relay.port,
        security=relay.security,
        username=relay.username,
        password=password,
        tls_verify=relay.tls_verify,
        max_per_connection=relay.max_per_connection,
    )


def unusable(relay: Relay, box: SecretBox) -> str | None:
    """Say why no message can go through this relay whatever its state, or None."""
    if relay.password_encrypted is not None:
        try:
            box.decrypt(relay.password_encrypted)
        except SecretUnreadable:
            return _UNREADABLE_PASSWORD
    return None


_UNREADABLE_PASSWORD = (
    "its password cannot be decrypted with RELAYBOARD_SECRET_KEY or RELAYBOARD_OLD_SECRET_KEYS "
    "(list the previous key in RELAYBOARD_OLD_SECRET_KEYS, or enter the password again)"
)


def snapshot(relay: Relay, box: SecretBox) -> RelaySnapshot:
    """Return a delivery pass's read-only view of a relay."""
    try:
        reach, why_not = endpoint(relay, box), None
    except SecretUnreadable:
        reach = endpoint(_without_password(relay), box)
        why_not = _UNREADABLE_PASSWORD
    return RelaySnapshot(
        endpoint=reach,
        priority=relay.priority,
        weight=relay.weight,
        enabled=relay.enabled,
        provider=relay.provider,
        max_rate=relay.max_rate,
        policy=policy_of(relay),
        circuit=circuit_of(relay),
        circuit_changed_at=relay.circuit_changed_at,
        cooldown_until=relay.cooldown_until,
        unknown_retries=relay.unknown_retries,
        unusable=why_not,
        maintenance=maintenance_reason(relay),
        maintenance_policy=relay.maintenance_policy,
    )


def maintenance_reason(relay: Relay) -> str | None:
    """Say since when and why a relay is in maintenance, or None when it is not."""
    if relay.maintenance_since is None:
        return None
    why = f"since {relay.maintenance_since:%Y-%m-%d %H:%M} UTC, by {relay.maintenance_by or '?'}"
    return why + (f": {relay.maintenance_reason}" if relay.maintenance_reason else "")


def _without_password(relay: Relay) -> Relay:
    """A detached copy of a relay's row without its (unreadable) password."""
    copy = Relay(**{c.key: getattr(relay, c.key) for c in Relay.__table__.columns})
    copy.password_encrypted = None
    return copy


def policy_of(relay: Relay) -> BreakerPolicy:
    """Return the breaker policy a relay is configured with."""
    return BreakerPolicy(
        failure_threshold=relay.breaker_threshold,
        open_seconds=relay.breaker_open_seconds,
        success_threshold=relay.breaker_success_threshold,
    )


def circuit_of(relay: Relay) -> Circuit:
    """Return a relay's circuit as the breaker sees it."""
    return Circuit(
        state=CircuitState(relay.circuit_state),
        failures=relay.circuit_failures,
        successes=relay.circuit_successes,
        open_until=relay.circuit_open_until,
        reason=relay.circuit_reason,
    )


# -- order ------------------------------------------------------------------------------


def reorder(ids: list[int]) -> list[Relay]:
    """Give relays priorities 10, 20, 30, … in the order of `ids`; unlisted ones follow."""
    if len(set(ids)) != len(ids):
        raise RelayError("the new order names a relay twice")
    current = ordered()
    by_id = {relay.id: relay for relay in current}
    # Ids of relays deleted meanwhile are ignored; relays added meanwhile keep their place
    # after the listed ones, so a stale page never loses a relay.
    listed = [by_id[i] for i in ids if i in by_id]
    rest = [relay for relay in current if relay.id not in set(ids)]
    new_order = listed + rest
    for position, relay in enumerate(new_order, start=1):
        relay.priority = position * 10
    db.session.commit()
    return new_order


def move(relay: Relay, direction: str) -> bool:
    """Move a relay one place up or down; say whether it moved."""
    if direction not in ("up", "down"):
        raise RelayError("direction must be up or down")
    ids = [r.id for r in ordered()]
    index = ids.index(relay.id)
    target = index - 1 if direction == "up" else index + 1
    if not 0 <= target < len(ids):
        return False
    ids[index], ids[target] = ids[target], ids[index]
    reorder(ids)
    return True


# -- circuits ---------------------------------------------------------------------------


def force_circuit(relay: Relay, state: str, note: str, by: str | None = None) -> EventRecord:
    """Open or close a relay's circuit by an operator's hand, with a note, and log it."""
    note = " ".join((note or "").split())
    if state not in FORCEABLE:
        raise RelayError("a circuit can be forced open or closed", "state")
    if not note:
        raise RelayError("say why: the note is kept with the change", "note")
    if len(note) > 500:
        raise RelayError("keep the note under 500 characters", "note")
    target = CircuitState(state)
    for _ in range(3):
        now = utcnow()
        circuit, transition = breaker.force(policy_of(relay), circuit_of(relay), now, target, note)
        if transition is None:  # forced into the state it is in: still the operator's word
            transition = Transition(circuit_of(relay).state, target, note)
        who = f" by {by}" if by else ""
        event = circuits.transition_event(
            relay.id,
            relay.name,
            transition,
            now,
            detail=f"forced {target.value.replace('_', '-')}{who}: {note}",
            by=by,
        )
        if save_circuit(relay, circuit, event, now):
            return event
        db.session.refresh(relay)  # a delivery pass changed it meanwhile: decide again
    raise RelayError("the circuit keeps changing under us; try again")


def save_circuit(relay: Relay, circuit: Circuit, event: EventRecord, now: datetime) -> bool:
    """Write a relay's new circuit and its event, if nobody changed the circuit since it was read.

    circuit_changed_at tells running delivery passes to adopt the change.
    """
    with db.engine.begin() as conn:
        written = circuits.save(conn, relay.id, relay.circuit_changed_at, circuit, [event], now)
    if written:
        db.session.refresh(relay)
    return written


# -- the table's numbers ----------------------------------------------------------------


def stats_last_hour(now: datetime | None = None) -> dict[int, RelayStats]:
    """Count each relay's delivered and failed attempts of the last hour, in one query."""
    since = (now or utcnow()) - timedelta(hours=1)
    delivered = func.sum(case((Attempt.outcome.in_(DELIVERED_OUTCOMES), 1), else_=0))
    rows = db.session.execute(
        select(Attempt.relay_id, func.count(), delivered)
        .where(Attempt.at >= since, Attempt.relay_id.is_not(None))
        .group_by(Attempt.relay_id)
    )
    return {
        relay_id: RelayStats(sent=int(sent or 0), failed=int(total) - int(sent or 0))
        for relay_id, total, sent in rows
    }


def last_health() -> dict[int, HealthCheck]:
    """Return each relay's latest health check, in one query (an index seek per relay)."""
    latest = (
        select(HealthCheck.id)
        .where(HealthCheck.relay_id == Relay.id)
        .order_by(HealthCheck.at.desc(), HealthCheck.id.desc())
        .limit(1)
        .correlate(Relay)
        .scalar_subquery()
    )
    checks = db.session.scalars(
        select(HealthCheck).select_from(Relay).join(HealthCheck, HealthCheck.id == latest)
    )
    return {check.relay_id: check for check in checks}
