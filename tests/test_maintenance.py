"""Relays in maintenance, against real SMTP servers: hold, reroute, release, planned windows."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from app.db import db
from app.models import Attempt, Drain, Event, Message, Relay, utcnow
from app.services import drains, maintenance
from app.services.delivery import DeliveryEngine
from app.services.maintenance import MaintenanceError


def release_all() -> None:
    """Let every running drain release all it holds: its ramp as if it had run an hour."""
    db.session.execute(update(Drain).values(run_seconds=Drain.run_seconds + 3600))
    db.session.commit()
    drains.pace()


def message(pk: int) -> Message:
    db.session.expire_all()
    row = db.session.get(Message, pk)
    assert row is not None
    return row


def relay(name: str) -> Relay:
    db.session.expire_all()
    row = db.session.scalar(select(Relay).where(Relay.name == name))
    assert row is not None
    return row


def attempts_on(name: str) -> int:
    return len(list(db.session.scalars(select(Attempt).where(Attempt.relay_name == name))))


def events(kind: str) -> list[Event]:
    return list(db.session.scalars(select(Event).where(Event.type == kind).order_by(Event.id)))


def test_hold_keeps_first_choice_mail_even_with_a_healthy_backup(
    smtp_server_factory: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    add_relay("primary", primary, priority=1, maintenance_policy="hold")
    add_relay("backup", backup, priority=2)
    maintenance.start(relay("primary"), "operator ops@example.com", "provider upgrade")
    queued = [send(priority=p)["id"] for p in ("low", "high", "normal")]

    report = engine.run_pass()

    assert report.claimed == 3
    assert [message(pk).status for pk in queued] == ["held"] * 3
    assert all(message(pk).waiting_for_relay_id == relay("primary").id for pk in queued)
    assert all(message(pk).attempt_count == 0 for pk in queued), "holding is not an attempt"
    assert attempts_on("primary") == attempts_on("backup") == 0
    assert primary.received == [] and backup.received == []
    assert engine.run_pass().claimed == 0, "held mail is not claimed again"

    released = maintenance.end(relay("primary"), "operator ops@example.com")
    assert released is not None and (released.held, released.deferred) == (3, 0)
    release_all()
    assert engine.run_pass().sent == 3
    got = primary.wait_for(3)
    assert backup.received == []
    by_id = {message(pk).message_id: message(pk).priority for pk in queued}
    assert [by_id[m.message_id] for m in got] == [0, 1, 2], "highest priority first"
    (ended,) = events("maintenance_end")
    assert ended.data is not None and ended.data["held"] == 3


def test_reroute_sends_through_the_backup_and_returns_to_the_primary_after(
    smtp_server_factory: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    add_relay("primary", primary, priority=1)  # reroute is the default policy
    add_relay("backup", backup, priority=2)
    maintenance.start(relay("primary"), "webhook")
    during = send()["id"]
    assert engine.run_pass().sent == 1
    assert len(backup.wait_for(1)) == 1 and primary.received == []
    assert message(during).relay_id == relay("backup").id
    assert attempts_on("primary") == 0, "a relay in maintenance is not tried"

    maintenance.end(relay("primary"), "webhook")
    after = send()["id"]
    release_all()
    assert engine.run_pass().sent == 1
    primary.wait_for(1)
    assert message(after).relay_id == relay("primary").id


def test_reroute_holds_when_no_other_relay_can_take_the_mail(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server)
    maintenance.start(relay("primary"), "cli")
    pk = send()["id"]
    engine.run_pass()
    row = message(pk)
    assert (row.status, row.waiting_for_relay_id) == ("held", relay("primary").id)
    assert row.next_attempt_at is None and "in maintenance" in (row.last_error or "")
    maintenance.end(relay("primary"), "cli")
    release_all()
    assert engine.run_pass().sent == 1
    assert message(pk).status == "sent"


def test_held_mail_does_not_age_into_failed(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server, maintenance_policy="hold")
    maintenance.start(relay("primary"), "cli")
    pk = send()["id"]
    engine.run_pass()
    row = message(pk)
    row.created_at = utcnow() - timedelta(days=30)  # far past RELAYBOARD_MAX_AGE
    db.session.commit()
    assert engine.run_pass().claimed == 0
    assert message(pk).status == "held"


def test_a_pinned_test_email_waits_for_its_relay(
    smtp_server_factory: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    add_relay("primary", primary, priority=1)  # reroute: but a pinned message has no other
    add_relay("backup", backup, priority=2)
    maintenance.start(relay("primary"), "cli")
    pk = send()["id"]
    message(pk).pinned_relay_id = relay("primary").id  # as the dashboard's test email is
    db.session.commit()
    engine.run_pass()
    assert message(pk).status == "held" and backup.received == []


def test_mail_deferred_for_a_relay_comes_forward_when_its_maintenance_ends(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server)
    smtp_server.fail("mail", 451, "4.3.0 try later", times=1)
    pk = send()["id"]
    engine.run_pass()
    row = message(pk)
    assert row.status == "deferred" and row.waiting_for_relay_id == relay("primary").id
    assert row.next_attempt_at is not None and row.next_attempt_at > utcnow()
    maintenance.start(relay("primary"), "cli")
    released = maintenance.end(relay("primary"), "cli")
    assert released is not None and released.deferred == 1
    release_all()
    assert engine.run_pass().sent == 1


def test_mail_held_after_the_end_was_read_is_released_not_stranded(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    """A pass that read the relay in maintenance and holds after its end was written."""
    add_relay("primary", smtp_server, maintenance_policy="hold")
    maintenance.start(relay("primary"), "cli")
    pk = send()["id"]
    from app.services.delivery import engine as engine_module

    write = engine_module.Pass.write

    def end_then_write(self: Any, outcomes: Any, *args: Any) -> None:
        if any(o.status == "held" for o in outcomes):
            maintenance.end(relay("primary"), "cli")  # the end lands just before the hold
        write(self, outcomes, *args)

    engine_module.Pass.write = end_then_write  # type: ignore[method-assign]
    try:
        engine.run_pass()
    finally:
        engine_module.Pass.write = write  # type: ignore[method-assign]
    # The hold landed after the end: it was queued again at once, and the pass's next
    # claim took it (without the guard it would wait for a maintenance that is over).
    assert message(pk).status == "sent"
    assert len(smtp_server.wait_for(1)) == 1


def test_start_and_end_are_events_naming_who(app: Any, smtp_server: Any, add_relay: Any) -> None:
    add_relay("primary", smtp_server)
    assert maintenance.start(relay("primary"), "operator ops@example.com", "  ESP  upgrade ")
    assert not maintenance.start(relay("primary"), "webhook"), "already in maintenance"
    row = relay("primary")
    assert (row.maintenance_by, row.maintenance_reason) == (
        "operator ops@example.com",
        "ESP upgrade",
    )
    assert maintenance.end(row, "cli") is not None
    assert maintenance.end(relay("primary"), "cli") is None, "not in maintenance"
    (started,) = events("maintenance_start")
    (ended,) = events("maintenance_end")
    assert "operator ops@example.com" in started.detail and "ESP upgrade" in started.detail
    assert "cli" in ended.detail
    with pytest.raises(MaintenanceError, match="500"):
        maintenance.start(relay("primary"), "cli", "x" * 501)


def test_a_planned_window_starts_and_ends_by_itself(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server, maintenance_policy="hold")
    now = utcnow() - timedelta(hours=3)  # the clock the windows tick by: planned 3 h ago
    window = maintenance.plan(
        relay("primary"), now + timedelta(hours=1), now + timedelta(hours=2), "ops", "upgrade", now
    )
    assert maintenance.tick(now) == 0 and relay("primary").maintenance_since is None
    assert maintenance.tick(now + timedelta(hours=1)) == 1
    row = relay("primary")
    assert row.maintenance_by == f"plan {window.id}" and row.maintenance_reason == "upgrade"
    pk = send()["id"]
    engine.run_pass()
    assert message(pk).status == "held"
    assert maintenance.tick(now + timedelta(hours=1, minutes=30)) == 0
    assert maintenance.tick(now + timedelta(hours=2)) == 1
    assert relay("primary").maintenance_since is None
    release_all()
    assert engine.run_pass().sent == 1
    assert [w.state for w in maintenance.windows(include_past=True)] == ["done"]


def test_a_window_must_make_sense(app: Any, smtp_server: Any, add_relay: Any) -> None:
    add_relay("primary", smtp_server)
    now = utcnow()
    with pytest.raises(MaintenanceError, match="end after it starts"):
        maintenance.plan(
            relay("primary"), now + timedelta(hours=2), now + timedelta(hours=1), "ops"
        )
    with pytest.raises(MaintenanceError, match="already ended"):
        maintenance.plan(
            relay("primary"), now - timedelta(hours=2), now - timedelta(hours=1), "ops"
        )


# -- maintenance and recycling seen in replies ------------------------------------------------

MAINTENANCE_REPLY = "Service isn't available, try again later"


def test_the_maintenance_reply_puts_a_mailersend_relay_in_maintenance_and_holds(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server, provider="mailersend", maintenance_policy="hold")
    smtp_server.fail("mail", 421, MAINTENANCE_REPLY)
    first, second = send()["id"], send()["id"]
    engine.run_pass()
    row = relay("primary")
    assert row.maintenance_by == "reply" and MAINTENANCE_REPLY in (row.maintenance_reason or "")
    assert (row.circuit_state, row.circuit_failures) == ("closed", 0), "not a breaker failure"
    assert [message(pk).status for pk in (first, second)] == ["held", "held"]
    assert attempts_on("primary") == 1, "the second message was not tried once it was known"
    smtp_server.reset()
    assert maintenance.end(relay("primary"), "webhook") is not None
    release_all()
    assert engine.run_pass().sent == 2


def test_the_maintenance_reply_reroutes_and_a_good_probe_ends_it(
    smtp_server_factory: Any, add_relay: Any, send: Any, engine: DeliveryEngine, app: Any
) -> None:
    from app.services import health

    primary, backup = smtp_server_factory(), smtp_server_factory()
    add_relay("primary", primary, provider="mailersend", priority=1)
    add_relay("backup", backup, priority=2)
    primary.fail("mail", 421, MAINTENANCE_REPLY)
    pk = send()["id"]
    assert engine.run_pass().sent == 1
    assert message(pk).relay_id == relay("backup").id and len(backup.wait_for(1)) == 1
    assert relay("primary").maintenance_by == "reply"
    primary.reset()
    health.probe_relay(relay("primary"), app.config["RELAYBOARD"])
    assert relay("primary").maintenance_since is None
    after = send()["id"]
    assert engine.run_pass().sent == 1
    assert message(after).relay_id == relay("primary").id


def test_another_providers_421_stays_a_breaker_failure(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server)  # generic
    smtp_server.fail("mail", 421, MAINTENANCE_REPLY)
    pk = send()["id"]
    engine.run_pass()
    row = relay("primary")
    assert row.maintenance_since is None and row.circuit_failures == 1
    assert message(pk).status == "deferred"


def test_mailersends_per_connection_limit_recycles_the_session_without_a_failure(
    smtp_server: Any, add_relay: Any, send: Any, app: Any
) -> None:
    settings = replace(app.config["RELAYBOARD"], sessions_per_relay=1)
    engine = DeliveryEngine(db.engine, settings)
    # max per connection above MailerSend's 5, as a user might set it
    add_relay("primary", smtp_server, provider="mailersend", max_per_connection=100)
    smtp_server.limit_per_connection(5, "421 4.7.0 Too many messages on this connection")
    queued = [send()["id"] for _ in range(12)]
    report = engine.run_pass()
    assert report.sent == 12 and len(smtp_server.wait_for(12)) == 12
    assert smtp_server.over_limit == 2 and smtp_server.connections == 3
    row = relay("primary")
    assert (row.circuit_failures, row.maintenance_since) == (0, None)
    outcomes = [a.outcome for pk in queued for a in attempts_of(pk)]
    assert outcomes.count("recycled") == 2 and outcomes.count("sent") == 12


def attempts_of(pk: int) -> list[Attempt]:
    return list(db.session.scalars(select(Attempt).where(Attempt.message_id == pk)))


def test_deleting_a_relay_queues_the_mail_held_for_it(
    smtp_server_factory: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    from app.services import relays

    primary, backup = smtp_server_factory(), smtp_server_factory()
    add_relay("primary", primary, priority=1, maintenance_policy="hold")
    add_relay("backup", backup, priority=2)
    maintenance.start(relay("primary"), "cli")
    pk = send()["id"]
    engine.run_pass()
    assert message(pk).status == "held"
    relays.remove(relay("primary"))
    row = message(pk)
    assert (row.status, row.waiting_for_relay_id) == ("queued", None), "not held for nothing"
    assert engine.run_pass().sent == 1
    assert len(backup.wait_for(1)) == 1
