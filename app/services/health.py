"""Health checks: probe relays (connect, EHLO, STARTTLS, AUTH, NOOP), keep the history,
and let a good probe half-open an open circuit early (never close it).

Scheduled checks run on one instance at a time: they take a lease row first.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import asdict
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from app import logs, settings_of, writelock
from app.domain import breaker
from app.domain.breaker import CircuitState
from app.extensions import db
from app.models import HealthCheck, JobLease, Relay, utcnow
from app.services import relays
from app.transport import loop as event_loop
from app.transport.smtp import Endpoint, ProbeResult, Timeouts, probe

log = logs.get("health")

LEASE_NAME = "health_checks"
# Shorter than the 5-minute schedule, so the next run may go to any instance.
LEASE_SECONDS = 240.0
OPERATOR, SCHEDULE = "operator", "schedule"


def expected_steps(relay: Relay) -> list[str]:
    """Return the steps a probe of this relay goes through, in order."""
    steps = ["connect", "ehlo"]
    if relay.security == "starttls":
        steps.append("starttls")
    if relay.username:
        steps.append("auth")
    steps.append("noop")
    return steps


def probe_relay(relay: Relay, trigger: str = SCHEDULE, by: str | None = None) -> HealthCheck:
    """Probe one relay now, store the check, and feed a success to its circuit."""
    endpoint, timeouts, ca_file = _probe_setup(relay)
    result = event_loop.run(
        probe(endpoint, timeouts, ca_file=ca_file), settings_of(current_app).event_loop
    )
    return _record(relay, result, trigger, by)


def run_scheduled_checks(
    owner: str | None = None, lease_seconds: float = LEASE_SECONDS
) -> list[HealthCheck] | None:
    """Probe every enabled relay at once, if this instance takes the lease; else None."""
    if not take_lease(LEASE_NAME, lease_seconds, owner or default_owner()):
        return None
    # The test-mode relay only logs: there is no server behind it to probe.
    targets = [r for r in relays.ordered() if r.enabled and r.provider != "log"]
    if not targets:
        return []
    setups = [_probe_setup(relay) for relay in targets]
    results = event_loop.run(_probe_all(setups), settings_of(current_app).event_loop)
    checks = [
        _record(relay, result, SCHEDULE) for relay, result in zip(targets, results, strict=True)
    ]
    failed = [c for c in checks if not c.ok]
    log.info("health checks", extra={"relays": len(checks), "failed": len(failed)})
    return checks


def history(relay: Relay, limit: int = 20) -> list[HealthCheck]:
    """Return a relay's latest health checks, newest first."""
    return list(
        db.session.scalars(
            select(HealthCheck)
            .where(HealthCheck.relay_id == relay.id)
            .order_by(HealthCheck.at.desc(), HealthCheck.id.desc())
            .limit(limit)
        )
    )


def default_owner() -> str:
    """Name this process as a lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


def take_lease(name: str, seconds: float, owner: str, *, now: datetime | None = None) -> bool:
    """Take (or renew) the lease of a singleton job; say whether `owner` holds it now.

    1. A conditional UPDATE takes an expired lease, or renews the owner's own; its row
       count says whether it did.
    2. Failing that, an INSERT creates the row; the primary key lets one instance win.
    """
    now = now or utcnow()
    expires = now + timedelta(seconds=seconds)
    leases = JobLease.__table__
    with writelock.transaction(db.engine) as conn:
        taken = conn.execute(
            update(leases)
            .where(
                leases.c.name == name,
                or_(leases.c.expires_at <= now, leases.c.owner == owner),
            )
            .values(owner=owner, expires_at=expires)
        ).rowcount
    if taken == 1:
        return True
    try:
        with writelock.transaction(db.engine) as conn:
            conn.execute(insert(leases).values(name=name, owner=owner, expires_at=expires))
    except IntegrityError:
        return False  # the row exists and another owner's lease is still running
    return True


def _probe_setup(relay: Relay) -> tuple[Endpoint, Timeouts, str | None]:
    settings = settings_of(current_app)
    timeouts = Timeouts(
        settings.connect_timeout, settings.command_timeout, settings.attempt_deadline
    )
    return relays.endpoint(relay, settings.secret_key), timeouts, settings.ca_file


async def _probe_all(setups: list[tuple[Endpoint, Timeouts, str | None]]) -> list[ProbeResult]:
    return list(
        await asyncio.gather(*(probe(ep, timeouts, ca_file=ca) for ep, timeouts, ca in setups))
    )


def _record(relay: Relay, result: ProbeResult, trigger: str, by: str | None = None) -> HealthCheck:
    """Store one probe's outcome, then let a success half-open an open circuit."""
    check = HealthCheck(
        relay_id=relay.id,
        at=utcnow(),
        ok=result.ok,
        response_ms=result.total_ms,
        error=result.error,
        steps=[asdict(step) for step in result.steps],
        trigger=trigger,
    )
    with writelock.writing(db.engine):
        db.session.add(check)
        db.session.commit()
    if result.ok:
        _half_open(relay, trigger, by)
    return check


def _half_open(relay: Relay, trigger: str, by: str | None) -> None:
    """Move an open circuit to half-open after a good probe: the next send is its trial."""
    before = CircuitState(relay.circuit_state)
    now = utcnow()
    circuit, transition = breaker.record_probe_success(relays.circuit_of(relay), now)
    if transition is None:
        return
    extra: dict[str, str] = {"trigger": trigger}
    if by:
        extra["by"] = by
    event = relays.transition_event(relay, transition, now, **extra)
    if relays.save_circuit(relay, before, circuit, event, now):
        log.warning(
            "circuit half-open",
            extra={"relay": relay.name, "from": before.value, "reason": transition.reason},
        )


def prune(days: int) -> int:
    """Delete health results older than `days` days; return how many."""
    cutoff = utcnow() - timedelta(days=days)
    with writelock.transaction(db.engine) as conn:
        result = conn.execute(delete(HealthCheck).where(HealthCheck.at < cutoff))
    return int(result.rowcount or 0)
