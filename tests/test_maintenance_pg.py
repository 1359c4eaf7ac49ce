"""Maintenance, drains and webhooks on both databases: hold and release through a drain,
two processes pacing one drain at once, a hold landing after the end, a redelivered
webhook. Each runs on SQLite and, marked `pg`, on PostgreSQL (RELAYBOARD_TEST_PG_URL)."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.db import db
from app.models import Drain, Event, Message, Relay, WebhookEvent, utcnow
from app.services import drains, maintenance, webhooks
from app.services.delivery import DeliveryEngine
from tests.test_hooks import SECRET, body_of, post
from tests.test_maintenance import release_all

pytestmark = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)


def relay(name: str) -> Relay:
    db.session.expire_all()
    row = db.session.scalar(select(Relay).where(Relay.name == name))
    assert row is not None
    return row


def message(pk: int) -> Message:
    db.session.expire_all()
    row = db.session.get(Message, pk)
    assert row is not None
    return row


def statuses() -> dict[str, int]:
    db.session.expire_all()
    rows = db.session.execute(select(Message.status, func.count()).group_by(Message.status))
    return {status: int(n) for status, n in rows}


def test_hold_and_release_through_a_drain(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server, maintenance_policy="hold")
    assert maintenance.start(relay("primary"), "cli", "provider upgrade")
    queued = [send(priority=p)["id"] for p in ("low", "high", "normal")]

    report = engine.run_pass()
    assert report.claimed == 3 and report.sent == 0
    assert [message(pk).status for pk in queued] == ["held"] * 3
    assert {message(pk).waiting_for_relay_id for pk in queued} == {relay("primary").id}
    assert smtp_server.received == []

    released = maintenance.end(relay("primary"), "cli")
    assert released is not None and (released.held, released.deferred) == (3, 0)
    assert released.drain_id is not None
    drain = drains.get(released.drain_id)
    assert (drain.state, drain.backlog, drain.released) == ("running", 3, 0)
    assert {message(pk).drain_id for pk in queued} == {drain.id}

    release_all()
    assert statuses() == {"queued": 3}
    assert engine.run_pass().sent == 3
    got = smtp_server.wait_for(3)
    priority = {message(pk).message_id: message(pk).priority for pk in queued}
    assert [priority[m.message_id] for m in got] == [0, 1, 2], "highest priority first"
    drains.pace()
    db.session.expire_all()
    drain = drains.get(released.drain_id)
    assert (drain.state, drain.released) == ("done", 3)
    progress = drains.progress(drain)
    assert (progress.sent, progress.remaining, progress.percent) == (3, 0, 100)


def test_two_processes_pacing_one_drain_at_once_never_release_above_the_ramp(
    app: Flask,
    smtp_server: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both read the drain before either writes (a barrier at `_release`): one releases
    what the ramp allows, the other's savepoint is undone, and it releases nothing."""
    add_relay("primary", smtp_server, maintenance_policy="hold")
    maintenance.start(relay("primary"), "cli")
    for index in range(12):
        send(subject=f"held {index}")
    engine.run_pass()
    assert statuses() == {"held": 12}
    # 3 messages a second, flat: the burst cap (4) is above a second's worth.
    settings = replace(app.config["RELAYBOARD"], drain_initial_rate=3, drain_growth=1)
    t0 = utcnow() - timedelta(minutes=5)
    released = maintenance.end(relay("primary"), "cli", now=t0, settings=settings)
    assert released is not None and released.drain_id is not None
    drain_id = released.drain_id

    barrier = threading.Barrier(2, timeout=20)
    real_release = drains._release

    def release_after_both_read(*args: Any) -> int:
        barrier.wait()
        return real_release(*args)

    monkeypatch.setattr(drains, "_release", release_after_both_read)
    database = db.engine

    def race(now: Any) -> list[int]:
        results: list[int] = []
        errors: list[BaseException] = []

        def pace() -> None:
            try:
                with database.begin() as conn:
                    results.append(drains.release_due(conn, now)[0])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=pace) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        assert len(results) == 2, "a pacer did not finish"
        return sorted(results)

    assert race(t0 + timedelta(seconds=1)) == [0, 3], "one released 3, the other none"
    assert statuses() == {"queued": 3, "held": 9}
    barrier.reset()
    assert race(t0 + timedelta(seconds=2)) == [0, 3]
    db.session.expire_all()
    drain = db.session.get(Drain, drain_id)
    assert drain is not None
    assert drain.released == 6 and drain.refilled_run == pytest.approx(2.0)
    assert statuses() == {"queued": 6, "held": 6}
    queued = db.session.scalar(
        select(func.count())
        .select_from(Message)
        .where(Message.drain_id == drain_id, Message.status == "queued")
    )
    assert queued == drain.released, "the count says what was released"


def test_a_hold_landing_after_the_end_is_queued_again(
    smtp_server: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pass that read the relay in maintenance and holds after its end was written."""
    add_relay("primary", smtp_server, maintenance_policy="hold")
    maintenance.start(relay("primary"), "cli")
    pk = send()["id"]
    from app.services.delivery import engine as engine_module

    write = engine_module.Pass.write
    ended: list[Any] = []

    def end_then_write(self: Any, outcomes: Any, *args: Any) -> None:
        if any(o.status == "held" for o in outcomes) and not ended:
            ended.append(maintenance.end(relay("primary"), "cli"))  # lands just before the hold
        write(self, outcomes, *args)

    monkeypatch.setattr(engine_module.Pass, "write", end_then_write)
    engine.run_pass()
    assert len(ended) == 1 and ended[0] is not None
    assert ended[0].held == 0 and ended[0].drain_id is None, "the message was still sending"
    # Queued again at once, and the pass's next claim took it.
    row = message(pk)
    assert (row.status, row.waiting_for_relay_id, row.drain_id) == ("sent", None, None)
    assert len(smtp_server.wait_for(1)) == 1


@pytest.fixture
def mailersend(add_relay: Any, smtp_server: Any) -> Relay:
    add_relay("other", smtp_server, provider="mailersend", webhook_secret="whsec-other-01234567")
    primary: Relay = add_relay(
        "primary", smtp_server, provider="mailersend", webhook_secret=SECRET, priority=1
    )
    return primary


def stored() -> int:
    return int(db.session.scalar(select(func.count()).select_from(WebhookEvent)) or 0)


def test_a_redelivered_webhook_is_stored_once(client: FlaskClient, mailersend: Relay) -> None:
    body = body_of("maintenance.start", domain_id="d1")
    first = post(client, body)
    assert first.status_code == 200 and first.get_json()["duplicate"] is False
    assert webhooks.process_pending() == 1
    again = post(client, body)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["duplicate"] is True
    assert stored() == 1 and webhooks.process_pending() == 0
    starts = db.session.scalars(select(Event).where(Event.type == "maintenance_start")).all()
    assert len(starts) == 1
    assert relay("primary").maintenance_by == "webhook"


def test_a_redelivery_racing_the_first_delivery_is_stored_once(
    app: Flask, mailersend: Relay
) -> None:
    body = body_of("maintenance.end", domain_id="d2")
    barrier = threading.Barrier(2, timeout=20)
    answers: list[tuple[int, Any]] = []

    def deliver() -> None:
        client = app.test_client()
        barrier.wait()
        response = post(client, body)
        answers.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [status for status, _ in answers] == [200, 200], answers
    assert sorted(answer["duplicate"] for _, answer in answers) == [False, True]
    assert stored() == 1
