"""Health checks: probes against real SMTP servers, their history, circuits, the job lease."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import func, select

from app.config import Settings, settings_of
from app.db import db
from app.models import Event, HealthCheck, JobLease, Relay, utcnow
from app.services import health, relays

AddRelay = Callable[..., Relay]


def settings() -> Settings:
    return settings_of(current_app)


def probe(relay: Relay, trigger: str = health.SCHEDULE, by: str | None = None) -> HealthCheck:
    """Probe a relay as the dashboard's Test Connection and the schedule do."""
    return health.probe_relay(relay, settings(), trigger, by)


def test_a_probe_of_a_live_relay_stores_an_ok_check_with_its_steps(
    add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server)
    check = probe(relay, "operator")

    stored = db.session.get(HealthCheck, check.id)
    assert stored is not None and stored.ok and stored.error is None
    assert stored.trigger == "operator" and stored.relay_id == relay.id
    assert [s["name"] for s in stored.steps] == ["connect", "ehlo", "noop"]
    assert all(s["ok"] and s["ms"] >= 0 for s in stored.steps)
    assert stored.response_ms >= max(s["ms"] for s in stored.steps)


def test_a_probe_goes_through_starttls_and_auth_trusting_the_configured_ca(
    add_relay: AddRelay, smtp_server_factory: Callable[..., Any]
) -> None:
    server = smtp_server_factory(auth=("apikey", "right"), tls="starttls")
    server.host = "localhost"  # the test certificate's name
    relay = add_relay("primary", server, security="starttls", username="apikey", password="right")
    check = probe(relay)

    assert check.ok, check.error
    assert [s["name"] for s in check.steps] == ["connect", "ehlo", "starttls", "auth", "noop"]
    assert health.expected_steps(relay) == ["connect", "ehlo", "starttls", "auth", "noop"]
    assert check.trigger == "schedule"


def test_a_probe_of_a_dead_relay_stores_the_failure_and_where_it_stopped(
    add_relay: AddRelay, refusing_server: Any, smtp_server_factory: Callable[..., Any]
) -> None:
    dead = add_relay("dead", refusing_server)
    refused = probe(dead)
    assert not refused.ok and refused.error == "connection refused"
    assert refused.steps == [
        {
            "name": "connect",
            "ok": False,
            "ms": refused.steps[0]["ms"],
            "detail": "connection refused",
        }
    ]

    server = smtp_server_factory(auth=("apikey", "right"))
    locked = add_relay("locked", server, username="apikey", password="wrong")
    denied = probe(locked)
    assert not denied.ok and denied.error is not None and denied.error.startswith("535")
    assert [(s["name"], s["ok"]) for s in denied.steps] == [
        ("connect", True),
        ("ehlo", True),
        ("auth", False),
    ]


def test_a_good_probe_half_opens_an_open_circuit_and_never_closes_it(
    add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server)
    relays.force_circuit(relay, "open", "provider outage")
    opened_at = relay.circuit_changed_at

    probe(relay, "operator", by="ops@example.com")
    db.session.refresh(relay)
    assert relay.circuit_state == "half_open"
    assert relay.circuit_open_until is None
    assert relay.circuit_changed_at is not None and opened_at is not None
    assert relay.circuit_changed_at >= opened_at
    event = db.session.scalars(select(Event).where(Event.type == "circuit_half_open")).one()
    assert event.relay_id == relay.id
    assert event.data == {
        "relay": "primary",
        "from": "open",
        "to": "half_open",
        "reason": "health probe succeeded; allowing a trial",
        "trigger": "operator",
        "by": "ops@example.com",
    }

    for _ in range(3):  # more good probes: still only a trial, never closed
        probe(relay)
    db.session.refresh(relay)
    assert relay.circuit_state == "half_open"
    assert db.session.scalar(select(func.count()).select_from(Event)) == 2  # open, half-open


def test_a_failed_probe_leaves_the_circuit_alone(
    add_relay: AddRelay, refusing_server: Any, smtp_server: Any
) -> None:
    dead = add_relay("dead", refusing_server)
    relays.force_circuit(dead, "open", "down")
    probe(dead)
    db.session.refresh(dead)
    assert dead.circuit_state == "open"

    live = add_relay("live", smtp_server)
    probe(live)
    db.session.refresh(live)
    assert live.circuit_state == "closed" and live.circuit_changed_at is None
    assert db.session.scalar(select(func.count()).select_from(Event)) == 1  # the forced open


def test_history_is_newest_first_and_last_health_is_the_newest_per_relay(
    add_relay: AddRelay, smtp_server: Any, refusing_server: Any
) -> None:
    live = add_relay("live", smtp_server)
    dead = add_relay("dead", refusing_server)
    first = probe(live)
    second = probe(live)
    failed = probe(dead)

    assert [c.id for c in health.history(live)] == [second.id, first.id]
    assert [c.id for c in health.history(live, limit=1)] == [second.id]
    latest = relays.last_health()
    assert latest[live.id].id == second.id and latest[dead.id].id == failed.id


def test_the_lease_goes_to_one_owner_until_it_expires(app: Flask) -> None:
    start = utcnow()
    assert health.take_lease("health_checks", 60, "alpha", now=start)
    assert not health.take_lease("health_checks", 60, "beta", now=start + timedelta(seconds=1))
    assert health.take_lease("health_checks", 60, "alpha", now=start + timedelta(seconds=30))
    # alpha renewed until start + 90 s
    assert not health.take_lease("health_checks", 60, "beta", now=start + timedelta(seconds=89))
    assert health.take_lease("health_checks", 60, "beta", now=start + timedelta(seconds=91))
    assert not health.take_lease("health_checks", 60, "alpha", now=start + timedelta(seconds=92))
    lease = db.session.get(JobLease, "health_checks")
    assert lease is not None and lease.owner == "beta"
    assert health.take_lease("reaper", 60, "alpha", now=start)  # leases are per job


def test_racing_instances_get_one_lease(app: Flask) -> None:
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def contend(owner: str) -> None:
        with app.app_context():
            barrier.wait()
            if health.take_lease("health_checks", 60, owner):
                winners.append(owner)

    threads = [threading.Thread(target=contend, args=(f"instance-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


def test_scheduled_checks_probe_enabled_relays_once_per_lease(
    add_relay: AddRelay, smtp_server: Any, refusing_server: Any
) -> None:
    live = add_relay("live", smtp_server)
    dead = add_relay("dead", refusing_server)
    add_relay("off", smtp_server, enabled=False)
    add_relay("log", smtp_server, provider="log")

    checks = health.run_scheduled_checks(settings(), owner="alpha")
    assert checks is not None
    assert {(c.relay_id, c.ok, c.trigger) for c in checks} == {
        (live.id, True, "schedule"),
        (dead.id, False, "schedule"),
    }
    assert health.run_scheduled_checks(settings(), owner="beta") is None  # alpha's lease still runs
    assert db.session.scalar(select(func.count()).select_from(HealthCheck)) == 2


def test_old_health_results_are_pruned(app: Any, add_relay: Any, smtp_server: Any) -> None:
    relay = add_relay("primary", smtp_server)
    db.session.add_all(
        [
            HealthCheck(
                relay_id=relay.id, at=utcnow() - timedelta(days=40), ok=True, response_ms=1.0
            ),
            HealthCheck(
                relay_id=relay.id, at=utcnow() - timedelta(days=1), ok=True, response_ms=1.0
            ),
        ]
    )
    db.session.commit()
    assert health.prune(days=30) == 1
    assert db.session.scalar(select(func.count()).select_from(HealthCheck)) == 1
