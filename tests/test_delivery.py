"""Delivery against real SMTP servers on loopback: failover, breaker, retries, leases."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from app.db import db
from app.models import Attempt, Event, Message, Relay, utcnow
from app.services import queue
from app.services.delivery import DeliveryEngine


def message(pk: int) -> Message:
    db.session.expire_all()
    row = db.session.get(Message, pk)
    assert row is not None
    return row


def events(pk: int | None = None, kind: str | None = None) -> list[Event]:
    query = select(Event).order_by(Event.id)
    if pk is not None:
        query = query.where(Event.message_id == pk)
    if kind is not None:
        query = query.where(Event.type == kind)
    return list(db.session.scalars(query))


def attempts(pk: int) -> list[Attempt]:
    return list(
        db.session.scalars(select(Attempt).where(Attempt.message_id == pk).order_by(Attempt.id))
    )


def relay(name: str) -> Relay:
    db.session.expire_all()
    row = db.session.scalar(select(Relay).where(Relay.name == name))
    assert row is not None
    return row


def make_due(pk: int | None = None) -> None:
    stmt = (
        update(Message).where(Message.next_attempt_at.is_not(None)).values(next_attempt_at=utcnow())
    )
    if pk is not None:
        stmt = stmt.where(Message.id == pk)
    db.session.execute(stmt)
    db.session.commit()


def test_it_delivers_through_the_primary_with_the_stored_message_id(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server)
    queued = send(to=["alice@example.org", "bob@example.org"])
    report = engine.run_pass()
    assert (report.claimed, report.sent) == (1, 1)
    (got,) = smtp_server.wait_for(1)
    assert got.message_id == queued["message_id"]
    assert sorted(got.rcpt_tos) == ["alice@example.org", "bob@example.org"]
    row = message(queued["id"])
    assert row.status == "sent" and row.sent_at is not None and row.relay_id == relay("primary").id
    assert [a.outcome for a in attempts(row.id)] == ["sent"]
    assert [e.type for e in events(row.id)] == ["sent"]


def test_it_fails_over_when_primary_refuses(
    refusing_server: Any, smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", refusing_server, priority=1)
    add_relay("backup", smtp_server, priority=2)
    queued = send()
    report = engine.run_pass()
    assert report.sent == 1 and report.failovers == 1
    (got,) = smtp_server.wait_for(1)
    assert got.message_id == queued["message_id"]
    (failover,) = events(queued["id"], "failover")
    assert failover.data is not None
    assert failover.data["from"] == "primary" and failover.data["to"] == "backup"
    assert "refused" in failover.data["reason"] and failover.data["outcome"] == "sent"
    tries = attempts(queued["id"])
    assert [(a.relay_name, a.outcome) for a in tries] == [
        ("primary", "failover"),
        ("backup", "sent"),
    ]
    assert message(queued["id"]).relay_id == relay("backup").id
    assert relay("primary").circuit_failures == 1


def test_the_breaker_opens_skips_half_opens_and_closes(
    smtp_server_factory: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    primary.fail("mail", 421, "4.3.2 Service not available, maintenance")
    add_relay("primary", primary, priority=1, breaker_threshold=3, breaker_open_seconds=600)
    add_relay("backup", backup, priority=2)
    ids = [send()["id"] for _ in range(6)]
    engine.run_pass()
    backup.wait_for(6)
    assert all(message(pk).status == "sent" for pk in ids)
    # Three messages met the 421; then the circuit opened and the rest went straight to backup.
    assert primary.connections == 3
    opened = relay("primary")
    assert opened.circuit_state == "open" and opened.circuit_open_until is not None
    assert "421" in (opened.circuit_reason or "")
    (transition,) = events(kind="circuit_open")
    assert "3 consecutive failures" in transition.detail
    # While open it is skipped without a connection.
    send()
    engine.run_pass()
    assert primary.connections == 3
    # After the timeout: a trial (half-open) that succeeds closes the circuit.
    primary.reset()
    db.session.execute(
        update(Relay)
        .where(Relay.name == "primary")
        .values(circuit_open_until=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    trial = send()["id"]
    engine.run_pass()
    primary.wait_for(1)
    assert message(trial).relay_id == relay("primary").id
    assert relay("primary").circuit_state == "closed"
    assert [e.type for e in events(kind="circuit_half_open")] == ["circuit_half_open"]
    assert [e.type for e in events(kind="circuit_closed")] == ["circuit_closed"]


def test_a_failed_trial_reopens_the_circuit(
    refusing_server: Any, smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", refusing_server, priority=1)
    add_relay("backup", smtp_server, priority=2)
    db.session.execute(
        update(Relay)
        .where(Relay.name == "primary")
        .values(circuit_state="open", circuit_open_until=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    send()
    engine.run_pass()
    row = relay("primary")
    assert row.circuit_state == "open" and row.circuit_open_until > utcnow()
    assert [e.type for e in events(kind=None) if e.type.startswith("circuit")] == [
        "circuit_half_open",
        "circuit_open",
    ]


def test_unknown_mailbox_fails_that_recipient_without_failover(
    smtp_server_factory: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    primary.reject_recipient("ghost@example.org", 550, "5.1.1 No such user")
    add_relay("primary", primary, priority=1)
    add_relay("backup", backup, priority=2)
    queued = send(to=["alice@example.org", "ghost@example.org", "bob@example.org"])
    engine.run_pass()
    (got,) = primary.wait_for(1)
    assert got.rcpt_tos == ["alice@example.org", "bob@example.org"]
    assert backup.received == [] and backup.connections == 0
    row = message(queued["id"])
    assert row.status == "sent" and row.pending_recipients is None
    (failed,) = events(queued["id"], "recipient_failed")
    assert "ghost@example.org" in failed.detail and "5.1.1" in failed.detail
    (attempt,) = attempts(queued["id"])
    assert attempt.outcome == "partial"
    assert attempt.recipients == {"ghost@example.org": "550 5.1.1 No such user"}
    assert relay("primary").circuit_failures == 0


def test_all_recipients_unknown_fails_the_message(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    smtp_server.reject_recipient("ghost@example.org")
    add_relay("primary", smtp_server)
    queued = send(to=["ghost@example.org"])
    engine.run_pass()
    row = message(queued["id"])
    assert row.status == "failed" and "5.1.1" in (row.last_error or "")
    assert row.next_attempt_at is None


def test_451_is_retried_with_backoff_and_the_same_message_id(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    smtp_server.fail("data", 451, "Requested action aborted: local error", times=1)
    add_relay("primary", smtp_server)
    queued = send()
    before = utcnow()
    engine.run_pass()
    row = message(queued["id"])
    assert row.status == "deferred" and row.attempt_count == 1
    assert row.next_attempt_at is not None
    # Base 60 s with equal jitter: between 30 and 60 s for the first retry.
    wait = (row.next_attempt_at - before).total_seconds()
    assert 29 <= wait <= 61, wait
    assert engine.run_pass().claimed == 0  # not due yet
    make_due(row.id)
    engine.run_pass()
    (got,) = smtp_server.wait_for(1)
    row = message(queued["id"])
    assert row.status == "sent" and row.attempt_count == 2
    assert got.message_id == row.message_id == queued["message_id"]
    assert [a.code for a in attempts(row.id)] == [451, 250]
    assert [e.type for e in events(row.id)] == ["deferred", "sent"]


def test_every_relay_down_defers_then_delivers_when_one_returns(
    refusing_server: Any,
    smtp_server_factory: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
) -> None:
    add_relay("primary", refusing_server, priority=1)
    add_relay("backup", refusing_server, priority=2)
    ids = [send()["id"] for _ in range(5)]
    engine.run_pass()
    assert {message(pk).status for pk in ids} == {"deferred"}
    assert all("refused" in (message(pk).last_error or "") for pk in ids)
    revived = smtp_server_factory()
    backup = relay("backup")
    backup.port = revived.port
    db.session.commit()
    make_due()
    engine.run_pass()
    assert len({r.message_id for r in revived.wait_for(5)}) == 5
    assert {message(pk).status for pk in ids} == {"sent"}


def test_with_no_relay_mail_waits_with_a_reason(send: Any, engine: DeliveryEngine) -> None:
    queued = send()
    engine.run_pass()
    row = message(queued["id"])
    assert row.status == "deferred" and "no relay" in (row.last_error or "")


def test_an_expired_lease_is_reclaimed(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server)
    queued = send()
    with db.engine.begin() as conn:
        (claimed,) = queue.claim(conn, "crashed-worker", 10, lease_seconds=30)
    assert claimed.id == queued["id"]
    assert engine.run_pass().claimed == 0  # leased elsewhere: not touched
    db.session.execute(update(Message).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    engine.run_pass()
    smtp_server.wait_for(1)
    assert message(queued["id"]).status == "sent"
    assert [e.type for e in events(queued["id"])] == ["lease_expired", "sent"]


@pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)
def test_two_drains_at_once_deliver_each_message_once(
    app: Any, smtp_server: Any, add_relay: Any, send: Any
) -> None:
    add_relay("primary", smtp_server, max_per_connection=1000)
    ids = {send(subject=f"n{i}")["id"] for i in range(120)}
    settings = app.config["RELAYBOARD"]
    engines = [DeliveryEngine(db.engine, settings) for _ in range(3)]
    reports: list[Any] = []
    threads = [threading.Thread(target=lambda e=e: reports.append(e.run_pass())) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(reports) == 3, "a drain crashed or did not finish"
    unsent = {pk: (m.status, m.last_error) for pk in ids if (m := message(pk)).status != "sent"}
    assert not unsent, f"{len(unsent)} not sent, for example {next(iter(unsent.values()))}"
    received = smtp_server.wait_for(120)
    assert len(received) == 120
    assert len({r.message_id for r in received}) == 120
    assert sum(r.claimed for r in reports) == 120


def test_a_hanging_primary_holds_back_at_most_the_threshold(
    hanging_server: Any, smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", hanging_server, priority=1, breaker_threshold=3)
    add_relay("backup", smtp_server, priority=2)
    ids: list[int] = []
    for _ in range(4):  # four passes of ten messages each
        ids += [send()["id"] for _ in range(10)]
        engine.run_pass()
    smtp_server.wait_for(40)
    assert {message(pk).status for pk in ids} == {"sent"}
    # One message per pass waited for the connect timeout; after three the circuit opened.
    waited = db.session.scalars(select(Attempt).where(Attempt.relay_name == "primary")).all()
    assert len(waited) == 3
    assert all(a.duration_ms >= 900 and a.stage == "connect" for a in waited)
    assert hanging_server.connections == 3
    assert relay("primary").circuit_state == "open"
    others = db.session.scalars(select(Event).where(Event.type == "failover")).all()
    assert len(others) == 30  # passes 1-3 failed over; pass 4 skipped the open circuit quietly


def test_sessions_are_recycled_after_max_messages_without_failures(
    smtp_server: Any, add_relay: Any, send: Any, app: Any
) -> None:
    add_relay("primary", smtp_server, max_per_connection=2)
    for _ in range(5):
        send()
    settings = app.config["RELAYBOARD"]
    from dataclasses import replace

    DeliveryEngine(db.engine, replace(settings, sessions_per_relay=1)).run_pass()
    smtp_server.wait_for(5)
    assert smtp_server.connections == 3
    assert relay("primary").circuit_failures == 0


def test_authentication_failure_opens_the_circuit_at_once(
    smtp_server_factory: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    primary = smtp_server_factory(auth=("user", "right"))
    backup = smtp_server_factory()
    add_relay("primary", primary, priority=1, username="user", password="wrong")
    add_relay("backup", backup, priority=2)
    queued = send()
    engine.run_pass()
    backup.wait_for(1)
    row = relay("primary")
    assert row.circuit_state == "open" and "authentication failed" in (row.circuit_reason or "")
    (failover,) = events(queued["id"], "failover")
    assert "535" in failover.detail


def test_authenticated_relay_delivers(
    smtp_server_factory: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    primary = smtp_server_factory(auth=("user", "s3cret"))
    add_relay("primary", primary, username="user", password="s3cret")
    send()
    engine.run_pass()
    primary.wait_for(1)


def test_a_reply_lost_after_the_final_dot_is_an_unknown_outcome(
    smtp_server_factory: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    primary, backup = smtp_server_factory(), smtp_server_factory()
    primary.hang_after_data()
    add_relay("primary", primary, priority=1)
    add_relay("backup", backup, priority=2)
    queued = send()
    engine.run_pass()
    row = message(queued["id"])
    # Not failed over (the relay may have it), not a breaker failure: retried, same Message-ID.
    assert row.status == "deferred" and "outcome unknown" in (row.last_error or "")
    assert backup.received == []
    assert [a.outcome for a in attempts(row.id)] == ["unknown"]
    assert relay("primary").circuit_failures == 0


@pytest.mark.parametrize("bound", [3, 0])
def test_unknown_outcomes_are_retried_up_to_the_relays_bound_then_fail(
    smtp_server: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
    client: Any,
    auth: dict[str, str],
    bound: int,
) -> None:
    smtp_server.drop_after_data()  # takes each message, then drops the line before its reply
    add_relay("primary", smtp_server, unknown_retries=bound)
    queued = send()
    for _ in range(bound + 3):  # more passes than the bound allows
        make_due(queued["id"])
        engine.run_pass()
    row = message(queued["id"])
    # Sent once, then retried `bound` times with the same Message-ID; then never again.
    assert len(smtp_server.hung) == bound + 1
    assert {got.message_id for got in smtp_server.hung} == {queued["message_id"]}
    assert row.status == "failed" and row.unknown_outcomes == bound + 1
    assert row.last_error is not None and row.last_error.startswith("outcome unknown"), row
    assert [a.outcome for a in attempts(row.id)] == ["unknown"] * (bound + 1)
    shown = client.get(f"/api/messages/{queued['id']}", headers=auth).get_json()
    assert [a["outcome"] for a in shown["attempts"]] == ["unknown"] * (bound + 1)
    assert shown["status"] == "failed"


def test_a_message_too_old_fails_with_a_reason(
    refusing_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", refusing_server)
    queued = send()
    db.session.execute(update(Message).values(created_at=utcnow() - timedelta(days=6)))
    db.session.commit()
    engine.run_pass()
    row = message(queued["id"])
    assert row.status == "failed" and "gave up after 1 attempt" in (row.last_error or "")
    assert "refused" in (row.last_error or "")


def test_starttls_is_verified_and_never_downgraded(
    smtp_server_factory: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    good = smtp_server_factory(tls="starttls")
    stripped = smtp_server_factory(tls="starttls", advertise_starttls=False)
    add_relay("stripped", stripped, priority=1, security="starttls")
    add_relay("good", good, priority=2, security="starttls")
    queued = send()
    engine.run_pass()
    good.wait_for(1)
    assert stripped.received == []
    (failover,) = events(queued["id"], "failover")
    assert "STARTTLS" in failover.detail


def test_implicit_tls_delivers(
    smtp_server_factory: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    server = smtp_server_factory(tls="tls")
    add_relay("tls", server, security="tls")
    send()
    engine.run_pass()
    server.wait_for(1)


def test_high_priority_goes_first(smtp_server: Any, add_relay: Any, send: Any, app: Any) -> None:
    add_relay("primary", smtp_server)
    low = send(priority="low")["id"]
    high = send(priority="high")["id"]
    normal = send()["id"]
    from dataclasses import replace

    engine = DeliveryEngine(
        db.engine, replace(app.config["RELAYBOARD"], batch_size=1, sessions_per_relay=1)
    )
    engine.run_pass()
    order = [r.message_id for r in smtp_server.wait_for(3)]
    assert order == [message(pk).message_id for pk in (high, normal, low)]


def test_a_log_only_relay_is_the_last_resort_in_test_mode(
    refusing_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", refusing_server, priority=1)
    add_relay("test-mode", refusing_server, priority=99, provider="log")
    queued = send()
    report = engine.run_pass()
    assert report.logged == 1
    row = message(queued["id"])
    assert row.status == "logged" and row.next_attempt_at is None
    assert [e.type for e in events(row.id)] == ["failover", "logged"]
    (failover,) = events(row.id, "failover")
    assert failover.data is not None and failover.data["to"] == "test-mode"


def test_load_balancing_spreads_by_weight(
    smtp_server_factory: Any, add_relay: Any, send: Any, app: Any
) -> None:
    heavy, light = smtp_server_factory(), smtp_server_factory()
    add_relay("heavy", heavy, priority=1, weight=3)
    add_relay("light", light, priority=2, weight=1)
    for _ in range(80):
        send()
    from dataclasses import replace

    DeliveryEngine(db.engine, replace(app.config["RELAYBOARD"], routing="load_balance")).run_pass()
    assert len(heavy.received) + len(light.received) == 80
    assert 40 <= len(heavy.received) <= 75 and len(light.received) >= 5


def test_the_scheduler_drains_in_the_background(
    smtp_server: Any, add_relay: Any, send: Any, app: Any
) -> None:
    from dataclasses import replace

    from app.jobs import start_background

    app.config["RELAYBOARD"] = replace(app.config["RELAYBOARD"], drain_interval=0.1)
    add_relay("primary", smtp_server)
    scheduler, job = start_background(app)
    try:
        queued = send()
        (got,) = smtp_server.wait_for(1, timeout=10)
    finally:
        job.stop.set()
        scheduler.shutdown(wait=True)
    assert got.message_id == queued["message_id"]


def test_a_pinned_message_goes_only_through_its_relay(
    smtp_server_factory: Any, add_relay: Any, app: Any, engine: DeliveryEngine
) -> None:
    from app.domain.mime import Mailbox, MessageSpec, build_message

    primary, tested = smtp_server_factory(), smtp_server_factory()
    add_relay("primary", primary, priority=1)
    target = add_relay("tested", tested, priority=2, enabled=False)
    spec = MessageSpec(
        Mailbox("ops@example.com"),
        [Mailbox("me@example.org")],
        [],
        [],
        None,
        "Relayboard test",
        "test",
        None,
        [],
        {},
        [],
    )
    queued = queue.enqueue(build_message(spec, max_bytes=10_000), pinned_relay_id=target.id)
    engine.run_pass()
    (got,) = tested.wait_for(1)
    assert got.message_id == queued.message_id and primary.received == []
    assert message(queued.id).relay_id == target.id


def test_a_reorder_mid_pass_takes_effect_after_the_next_claim(
    smtp_server_factory: Any, add_relay: Any, send: Any, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from app.services.delivery.engine import Pass

    first, second = smtp_server_factory(), smtp_server_factory()
    add_relay("first", first, priority=1)
    add_relay("second", second, priority=2)
    for _ in range(6):
        send()
    engine = DeliveryEngine(
        db.engine, replace(app.config["RELAYBOARD"], batch_size=2, sessions_per_relay=1)
    )
    claim = Pass.claim_batch
    database = db.engine
    calls = 0

    def claim_then_disable(self: Pass, limit: int) -> Any:
        nonlocal calls
        calls += 1
        result = claim(self, limit)
        if calls == 1:  # an operator moves "first" below "second" right after the first claim
            with database.begin() as conn:
                conn.execute(update(Relay).where(Relay.name == "first").values(priority=3))
        return result

    monkeypatch.setattr(Pass, "claim_batch", claim_then_disable)
    engine.run_pass()
    second.wait_for(4)
    assert len(first.received) <= 2 and len(first.received) + len(second.received) == 6


def test_recipients_already_delivered_are_never_sent_again(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server)
    smtp_server.reject_recipient("b@example.org", 450, "4.2.1 Mailbox busy")
    smtp_server.reject_recipient("c@example.org", 450, "4.2.1 Mailbox busy")
    queued = send(to=["a@example.org", "b@example.org", "c@example.org"])
    engine.run_pass()
    row = message(queued["id"])
    assert row.status == "deferred" and row.pending_recipients == ["b@example.org", "c@example.org"]
    make_due()
    engine.run_pass()  # b and c are still busy: nothing changes, and a is not sent again
    assert message(queued["id"]).pending_recipients == ["b@example.org", "c@example.org"]
    smtp_server.reset()
    make_due()
    engine.run_pass()
    received = smtp_server.wait_for(2)
    assert [r.rcpt_tos for r in received] == [["a@example.org"], ["b@example.org", "c@example.org"]]
    assert len({r.message_id for r in received}) == 1  # one message, delivered in two parts
    assert message(queued["id"]).status == "sent"
