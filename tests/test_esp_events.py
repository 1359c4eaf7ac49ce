"""ESP activity events on messages' timelines, unmatched ones kept, hard bounces suppressed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.cli import cli
from app.db import db
from app.domain.replies import queued_id
from app.models import Attempt, Event, Message, Suppression
from app.services import suppressions, webhooks
from app.services.delivery import DeliveryEngine
from tests.test_hooks import SECRET, body_of, post


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("2.0.0 Ok: queued as 7F3A2B1C", "7F3A2B1C"),
        ("OK id=5ee0b166b251345e407c9207", "5ee0b166b251345e407c9207"),
        ("2.0.0 Ok: queued as <abc.def@mail.example>", "abc.def@mail.example"),
        ("2.0.0 OK", None),
        ("", None),
    ],
)
def test_the_id_a_250_reply_gives(text: str, found: str | None) -> None:
    assert queued_id(text) == found


@pytest.fixture
def sent(add_relay: Any, smtp_server: Any, send: Any, engine: DeliveryEngine) -> dict[str, Any]:
    """A message MailerSend took with "queued as ESP123"."""
    add_relay("primary", smtp_server, provider="mailersend", webhook_secret=SECRET)
    smtp_server.fail("data", 250, "2.0.0 Ok: queued as ESP123", times=1)
    queued: dict[str, Any] = send(to=["alice@example.org"])
    assert engine.run_pass().sent == 1
    (attempt,) = db.session.scalars(select(Attempt).where(Attempt.message_id == queued["id"]))
    assert attempt.esp_id == "ESP123"
    return queued


def timeline(client: FlaskClient, auth: dict[str, str], pk: int) -> list[dict[str, Any]]:
    response = client.get(f"/api/messages/{pk}", headers=auth)
    assert response.status_code == 200
    events: list[dict[str, Any]] = response.get_json()["events"]
    return events


def test_an_activity_event_lands_on_its_messages_timeline(
    client: FlaskClient, auth: dict[str, str], sent: dict[str, Any]
) -> None:
    body = body_of(
        "activity.delivered",
        id="ev1",
        email="alice@example.org",
        email_id="ESP123",
        type="delivered",
    )
    assert post(client, body).status_code == 200
    assert webhooks.process_pending() == 1
    kinds = [e["type"] for e in timeline(client, auth, sent["id"])]
    assert "esp_delivered" in kinds
    (event,) = db.session.scalars(select(Event).where(Event.type == "esp_delivered"))
    assert "reports delivered for alice@example.org" in event.detail


def test_a_legacy_event_matches_by_the_emails_id(
    client: FlaskClient, auth: dict[str, str], sent: dict[str, Any]
) -> None:
    body = json.dumps(
        {
            "type": "activity.soft_bounced",
            "domain_id": "d1",
            "created_at": "2025-08-05 22:27:14",
            "webhook_id": "w1",
            "url": "https://relay.example.com/hooks/mailersend",
            "data": {
                "object": "activity",
                "id": "ev9",
                "type": "soft_bounced",
                "email": {
                    "id": "ESP123",
                    "message": {"id": "m9"},
                    "recipient": {"email": "alice@example.org"},
                    "status": "rejected",
                },
            },
        }
    ).encode()
    post(client, body)
    webhooks.process_pending()
    assert "esp_soft_bounced" in [e["type"] for e in timeline(client, auth, sent["id"])]


def test_an_event_that_matches_nothing_is_kept_as_unmatched(
    client: FlaskClient, sent: dict[str, Any]
) -> None:
    post(client, body_of("activity.opened", id="ev2", email="zoe@example.org", email_id="NOPE"))
    webhooks.process_pending()
    (event,) = db.session.scalars(select(Event).where(Event.type == "esp_unmatched"))
    assert event.message_id is None and "matches no message" in event.detail


def test_a_hard_bounce_suppresses_and_a_later_send_fails_that_recipient_at_once(
    app: Flask,
    client: FlaskClient,
    sent: dict[str, Any],
    send: Any,
    engine: DeliveryEngine,
    smtp_server: Any,
) -> None:
    bounce = body_of(
        "activity.hard_bounced", id="ev3", email="Alice@Example.org", email_id="ESP123"
    )
    post(client, bounce)
    webhooks.process_pending()
    (row,) = db.session.scalars(select(Suppression))
    assert row.address == "alice@example.org" and "hard bounce" in row.reason
    before = len(smtp_server.received)
    both = send(to=["alice@example.org", "bob@example.org"])["id"]
    alone = send(to=["ALICE@example.org"])["id"]
    engine.run_pass()
    db.session.expire_all()
    partly, only = db.session.get(Message, both), db.session.get(Message, alone)
    assert partly is not None and only is not None
    assert partly.status == "sent" and only.status == "failed"
    assert "suppressed: hard bounce" in (only.last_error or "")
    got = smtp_server.wait_for(before + 1)
    assert got[-1].rcpt_tos == ["bob@example.org"], "the suppressed recipient is not sent to"
    assert db.session.scalars(select(Attempt).where(Attempt.message_id == alone)).all() == []

    runner = app.test_cli_runner()
    listed = runner.invoke(cli, ["suppressions", "list", "--search", "alice"])
    assert "alice@example.org" in listed.stdout and "hard bounce" in listed.stdout
    assert runner.invoke(cli, ["suppressions", "remove", "alice@example.org"]).exit_code == 0
    again = runner.invoke(cli, ["suppressions", "remove", "alice@example.org"])
    assert again.exit_code == 1 and "is not suppressed" in again.output
    pk = send(to=["alice@example.org"])["id"]
    engine.run_pass()
    assert db.session.get(Message, pk).status == "sent"  # type: ignore[union-attr]


def test_suppress_refuses_what_is_not_an_address(app: Flask) -> None:
    with pytest.raises(ValueError, match="not an email address"):
        suppressions.suppress("nobody", "x", "test")
    assert suppressions.suppress("a@example.org", "x", "test")
    assert not suppressions.suppress("A@example.org", "x", "test"), "already suppressed"
    assert [s.address for s in suppressions.listing("A@")] == ["a@example.org"]
    assert suppressions.listing("%") == [], "search is literal"
