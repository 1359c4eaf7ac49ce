"""Relays: create, change, order, and their transport endpoints and circuits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import select

from app import crypto
from app.domain.breaker import BreakerPolicy, Circuit, CircuitState
from app.extensions import db
from app.models import Relay
from app.transport.smtp import SECURITY_MODES, Endpoint

# "log" is test mode: mail routed to it is logged, not sent (status "logged").
PROVIDERS = ("generic", "mailersend", "sendgrid", "mailgun", "ses", "postfix", "log")
MAINTENANCE_POLICIES = ("hold", "reroute")


class RelayError(ValueError):
    """A relay cannot be stored as asked; the message says why."""


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
    circuit_changed_at: Any
    cooldown_until: Any


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
        raise RelayError("name must be 1 to 64 characters")
    host = values.get("host")
    if host is not None and (not host or len(host) > 255 or any(c.isspace() for c in host)):
        raise RelayError(f"host {host!r} is not a host name or address")
    port = values.get("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise RelayError(f"port {port} is out of range (1-65535)")
    if values.get("security") not in (None, *SECURITY_MODES):
        raise RelayError(f"security must be one of {', '.join(SECURITY_MODES)}")
    if values.get("provider") not in (None, *PROVIDERS):
        raise RelayError(f"provider must be one of {', '.join(PROVIDERS)}")
    if values.get("maintenance_policy") not in (None, *MAINTENANCE_POLICIES):
        raise RelayError("maintenance policy must be hold or reroute")
    for key, low in (
        ("weight", 0),
        ("max_per_connection", 1),
        ("breaker_threshold", 1),
        ("breaker_open_seconds", 1),
        ("breaker_success_threshold", 1),
    ):
        if values.get(key) is not None and int(values[key]) < low:
            raise RelayError(f"{key.replace('_', ' ')} must be at least {low}")
    for key in ("username", "password"):
        value = values.get(key)
        if value and any(c in value for c in "\r\n\0"):
            raise RelayError(f"{key} must not contain line breaks")


def create(**values: Any) -> Relay:
    """Add a relay; the password is encrypted before it is stored."""
    validate(values)
    if db.session.scalar(select(Relay.id).where(Relay.name == values["name"])):
        raise RelayError(f"a relay named {values['name']!r} already exists")
    password = values.pop("password", None)
    if values.get("priority") is None:
        last = db.session.scalar(select(Relay.priority).order_by(Relay.priority.desc()))
        values["priority"] = (last or 0) + 10
    relay = Relay(**{k: v for k, v in values.items() if v is not None})
    if password:
        relay.password_encrypted = crypto.encrypt(current_app.config["SECRET_KEY"], password)
    db.session.add(relay)
    db.session.commit()
    return relay


def update(relay: Relay, **values: Any) -> Relay:
    """Change a relay; a blank password keeps the stored one."""
    validate(values)
    password = values.pop("password", None)
    for key, value in values.items():
        setattr(relay, key, value)
    if password:
        relay.password_encrypted = crypto.encrypt(current_app.config["SECRET_KEY"], password)
    db.session.commit()
    return relay


def remove(relay: Relay) -> None:
    """Delete a relay (messages and attempts keep its name)."""
    db.session.delete(relay)
    db.session.commit()


def endpoint(relay: Relay, secret_key: str) -> Endpoint:
    """Return the transport endpoint of a relay, its password decrypted."""
    password = (
        crypto.decrypt(secret_key, relay.password_encrypted) if relay.password_encrypted else None
    )
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


def snapshot(relay: Relay, secret_key: str) -> RelaySnapshot:
    """Return a delivery pass's read-only view of a relay."""
    return RelaySnapshot(
        endpoint=endpoint(relay, secret_key),
        priority=relay.priority,
        weight=relay.weight,
        enabled=relay.enabled,
        provider=relay.provider,
        max_rate=relay.max_rate,
        policy=BreakerPolicy(
            failure_threshold=relay.breaker_threshold,
            open_seconds=relay.breaker_open_seconds,
            success_threshold=relay.breaker_success_threshold,
        ),
        circuit=Circuit(
            state=CircuitState(relay.circuit_state),
            failures=relay.circuit_failures,
            successes=relay.circuit_successes,
            open_until=relay.circuit_open_until,
            reason=relay.circuit_reason,
        ),
        circuit_changed_at=relay.circuit_changed_at,
        cooldown_until=relay.cooldown_until,
    )
