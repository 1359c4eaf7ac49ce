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

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from app import logs
from app.config import Settings
from app.crypto import SecretUnreadable
from app.db import db
from app.domain import breaker
from app.models import HealthCheck, JobLease, Relay, utcnow
from app.services import circuits, maintenance, relays
from app.transport.smtp import Endpoint, ProbeResult, StepTiming, Timeouts, probe

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


def probe_relay(
    relay: Relay, settings: Settings, trigger: str = SCHEDULE, by: str | None = None
) -> HealthCheck:
    """Probe one relay now, store the check, and feed a success to its circuit."""
    result = asyncio.run(_probe(relay, settings))
    return _record(relay, result, trigger, by, settings)


def run_scheduled_checks(
    settings: Settings, owner: str | None = None, lease_seconds: float = LEASE_SECONDS
) -> list[HealthCheck] | None:
    """Probe every enabled relay at once, if this instance takes the lease; else None."""
    if not take_lease(LEASE_NAME, lease_seconds, owner or default_owner()):
        return None
    # The test-mode relay only logs: there is no server behind it to probe.
    targets = [r for r in relays.ordered() if r.enabled and r.provider != "log"]
    if not targets:
        return []
    results = asyncio.run(_probe_all(targets, settings))
    checks = [
        _record(relay, result, SCHEDULE, settings=settings)
        for relay, result in zip(targets, results, strict=True)
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
    with db.engine.begin() as conn:
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
        with db.engine.begin() as conn:
            conn.execute(insert(leases).values(name=name, owner=owner, expires_at=expires))
    except IntegrityError:
        return False  # the row exists and another owner's lease is still running
    return True


async def _probe(relay: Relay, settings: Settings) -> ProbeResult:
    """Probe a relay; one whose password no key can read fails without a connection."""
    try:
        endpoint: Endpoint = relays.endpoint(relay, settings.secret_box)
    except SecretUnreadable:
        why = relays.unusable(relay, settings.secret_box) or "its password cannot be read"
        return ProbeResult(False, [StepTiming("auth", False, 0.0, why)], 0.0, why, "secret")
    timeouts = Timeouts(
        settings.connect_timeout, settings.command_timeout, settings.attempt_deadline
    )
    return await probe(endpoint, timeouts, ca_file=settings.ca_file)


async def _probe_all(targets: list[Relay], settings: Settings) -> list[ProbeResult]:
    return list(await asyncio.gather(*(_probe(relay, settings) for relay in targets)))


def _record(
    relay: Relay,
    result: ProbeResult,
    trigger: str,
    by: str | None = None,
    settings: Settings | None = None,
) -> HealthCheck:
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
    db.session.add(check)
    db.session.commit()
    if result.ok:
        _half_open(relay, trigger, by)
        if relay.maintenance_by == maintenance.BY_REPLY:  # its reply put it there: over
            maintenance.end(relay, "health probe", "a health probe succeeded", settings=settings)
    return check


def _half_open(relay: Relay, trigger: str, by: str | None) -> None:
    """Move an open circuit to half-open after a good probe: the next send is its trial."""
    now = utcnow()
    circuit, transition = breaker.record_probe_success(relays.circuit_of(relay), now)
    if transition is None:
        return
    extra: dict[str, str] = {"trigger": trigger}
    if by:
        extra["by"] = by
    event = circuits.transition_event(relay.id, relay.name, transition, now, **extra)
    if relays.save_circuit(relay, circuit, event, now):
        log.warning(
            "circuit half-open",
            extra={
                "relay": relay.name,
                "from": transition.before.value,
                "reason": transition.reason,
            },
        )


def prune(days: int) -> int:
    """Delete health results older than `days` days; return how many."""
    cutoff = utcnow() - timedelta(days=days)
    with db.engine.begin() as conn:
        result = conn.execute(delete(HealthCheck).where(HealthCheck.at < cutoff))
    return int(result.rowcount or 0)
