"""POST /hooks/mailersend: signatures, storage once, acting off the request, maintenance."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.db import db
from app.models import Event, Relay, WebhookEvent
from app.services import webhooks
from app.services.delivery import DeliveryEngine
from tests.test_maintenance import release_all

SECRET = "whsec-primary-0123456789"
TEST_SECRET = "test_Am3L1GuOIc4blLUuHqAPxxwkZaJyEk8G"


def body_of(kind: str, **data: Any) -> bytes:
    payload = {"type": kind, "created_at": "2025-08-05 22:27:14", "data": data}
    return json.dumps(payload).encode()


def post(client: FlaskClient, body: bytes, secret: str | None = SECRET, **headers: str) -> Any:
    if secret is not None:
        headers.setdefault("Signature", hmac.new(secret.encode(), body, hashlib.sha256).hexdigest())
    return client.post(
        "/hooks/mailersend", data=body, headers=headers, content_type="application/json"
    )


def relay(name: str) -> Relay:
    db.session.expire_all()
    row = db.session.scalar(select(Relay).where(Relay.name == name))
    assert row is not None
    return row


def stored() -> int:
    return int(db.session.scalar(select(func.count()).select_from(WebhookEvent)) or 0)


@pytest.fixture
def mailersend(add_relay: Any, smtp_server: Any) -> Relay:
    add_relay("other", smtp_server, provider="mailersend", webhook_secret="whsec-other-01234567")
    relay: Relay = add_relay(
        "primary", smtp_server, provider="mailersend", webhook_secret=SECRET, priority=1
    )
    return relay


def test_a_signed_maintenance_start_is_stored_at_once_and_acted_on_off_the_request(
    client: FlaskClient, mailersend: Relay
) -> None:
    response = post(client, body_of("maintenance.start", domain_id="d1"))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["message"] == "received"
    assert relay("primary").maintenance_since is None, "acting waits for the scheduler"
    (event,) = db.session.scalars(select(WebhookEvent))
    assert (event.relay_id, event.type, event.processed_at) == (
        mailersend.id,
        "maintenance.start",
        None,
    )

    assert webhooks.process_pending() == 1
    row = relay("primary")
    assert row.maintenance_since is not None and row.maintenance_by == "webhook"
    assert relay("other").maintenance_since is None, "the secret that verifies names the relay"
    assert webhooks.process_pending() == 0, "acted on once"

    post(client, body_of("maintenance.end", domain_id="d1"))
    assert webhooks.process_pending() == 1
    assert relay("primary").maintenance_since is None
    types = [e.type for e in db.session.scalars(select(Event).order_by(Event.id))]
    assert types == ["maintenance_start", "maintenance_end"]


@pytest.mark.parametrize(
    ("signature", "why"),
    [
        (None, "missing"),
        ("", "missing"),
        ("00" * 32, "matches no relay"),
        ("not hex at all", "matches no relay"),
        ("é" * 64, "matches no relay"),
    ],
)
def test_missing_or_wrong_signatures_are_refused_and_nothing_changes(
    client: FlaskClient, mailersend: Relay, signature: str | None, why: str
) -> None:
    headers = {} if signature is None else {"Signature": signature}
    response = post(client, body_of("maintenance.start"), secret=None, **headers)
    assert response.status_code == 401
    assert why in response.get_json()["error"]["message"]
    assert stored() == 0


def test_a_wrong_secret_or_a_tampered_body_is_refused(
    client: FlaskClient, mailersend: Relay
) -> None:
    assert (
        post(client, body_of("maintenance.start"), secret="whsec-somebody-else").status_code == 401
    )
    body = body_of("maintenance.end")
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    tampered = body.replace(b"maintenance.end", b"maintenance.start")
    response = post(client, tampered, secret=None, Signature=signature)
    assert response.status_code == 401
    assert stored() == 0 and webhooks.process_pending() == 0
    assert relay("primary").maintenance_since is None


def test_a_redelivered_event_changes_nothing_twice(client: FlaskClient, mailersend: Relay) -> None:
    body = body_of("maintenance.start", domain_id="d1")
    assert post(client, body).get_json()["duplicate"] is False
    webhooks.process_pending()
    again = post(client, body)
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert stored() == 1 and webhooks.process_pending() == 0
    starts = db.session.scalars(select(Event).where(Event.type == "maintenance_start")).all()
    assert len(starts) == 1


def test_activity_events_are_deduplicated_by_their_id(
    client: FlaskClient, mailersend: Relay
) -> None:
    first = body_of("activity.delivered", id="ev1", email="alice@example.org", email_id="e1")
    # The same event id with another body (e.g. re-serialised) is the same event.
    second = body_of(
        "activity.delivered", id="ev1", email="alice@example.org", email_id="e1", tags=[]
    )
    assert post(client, first).get_json()["duplicate"] is False
    assert post(client, second).get_json()["duplicate"] is True
    assert stored() == 1


def test_the_public_test_secret_verifies_the_test_ping_and_nothing_else(
    client: FlaskClient, mailersend: Relay
) -> None:
    ping = post(client, body_of("webhook.test"), secret=TEST_SECRET)
    assert ping.status_code == 200 and ping.get_json()["message"] == "test received"
    forged = post(client, body_of("maintenance.start"), secret=TEST_SECRET)
    assert forged.status_code == 401
    assert "webhook.test only" in forged.get_json()["error"]["message"]
    assert stored() == 0


def test_unknown_types_are_stored_and_answered_200(client: FlaskClient, mailersend: Relay) -> None:
    response = post(client, body_of("domain.verified", domain_id="d1"))
    assert response.status_code == 200
    assert webhooks.process_pending() == 1
    (event,) = db.session.scalars(select(WebhookEvent))
    assert (event.type, event.result) == ("domain.verified", "stored")


@pytest.mark.parametrize(
    ("body", "status", "why"),
    [
        (b"not json", 400, "not JSON"),
        (b'{"data": {}}', 400, "no `type`"),
        (b'{"type": "x", "pad": "' + b"a" * 300_000 + b'"}', 413, "larger than"),
    ],
)
def test_bad_bodies_say_what_is_wrong(
    client: FlaskClient, mailersend: Relay, body: bytes, status: int, why: str
) -> None:
    response = post(client, body)
    assert response.status_code == status
    assert why in response.get_json()["error"]["message"]
    assert stored() == 0


def test_a_relay_of_another_provider_is_never_named_by_a_webhook(
    client: FlaskClient, add_relay: Any, smtp_server: Any
) -> None:
    add_relay("generic", smtp_server, webhook_secret=SECRET)  # provider generic
    assert post(client, body_of("maintenance.start")).status_code == 401


def test_needs_no_session_or_csrf_token(app: Any, mailersend: Relay) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    response = post(client, body_of("maintenance.start"))
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers


def test_the_webhook_holds_mail_and_its_end_releases_it(
    client: FlaskClient, mailersend: Relay, smtp_server: Any, send: Any, engine: DeliveryEngine
) -> None:
    primary = relay("primary")
    primary.maintenance_policy = "hold"
    db.session.commit()
    post(client, body_of("maintenance.start", domain_id="d1"))
    webhooks.process_pending()
    pk = send()["id"]
    engine.run_pass()
    assert smtp_server.received == []
    post(client, body_of("maintenance.end", domain_id="d1"))
    webhooks.process_pending()
    release_all()
    assert engine.run_pass().sent == 1
    (got,) = smtp_server.wait_for(1)
    assert got.message_id is not None and pk


def test_signing_secrets_are_read_once_a_second_not_once_a_webhook(
    client: FlaskClient, mailersend: Relay
) -> None:
    """The gain of webhooks.SECRETS_FOR: reading and decrypting every relay's secret for each
    webhook was a third of its CPU (docs/benchmarks.md)."""
    from sqlalchemy import event

    reads: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "webhook_secret" in statement:
            reads.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        for i in range(10):
            assert post(client, body_of("activity.sent", id=f"e{i}")).status_code == 200
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert len(reads) <= 1, f"{len(reads)} reads of the secrets for 10 webhooks"


def test_a_new_secret_takes_effect_at_once_in_this_process(
    client: FlaskClient, mailersend: Relay, app: Any
) -> None:
    from app.services import relays

    assert post(client, body_of("activity.sent", id="a")).status_code == 200
    relays.update(
        relay("primary"), app.config["RELAYBOARD"].secret_box, webhook_secret="whsec-new-0123456789"
    )
    assert post(client, body_of("activity.sent", id="b")).status_code == 401
    assert (
        post(client, body_of("activity.sent", id="c"), secret="whsec-new-0123456789").status_code
        == 200
    )


def test_the_scheduler_acts_on_batch_after_batch_until_none_wait(
    app: Any, client: FlaskClient, mailersend: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app import jobs

    monkeypatch.setattr(jobs, "WEBHOOK_BATCH", 20)
    for i in range(50):
        assert post(client, body_of("activity.sent", id=f"k{i}")).status_code == 200
    jobs.maintenance_job(app)
    pending = db.session.scalar(
        select(func.count()).select_from(WebhookEvent).where(WebhookEvent.processed_at.is_(None))
    )
    assert pending == 0, "one run of the job acted on all 50, 20 at a time"


def test_acting_on_a_batch_takes_a_fixed_number_of_queries(
    client: FlaskClient, mailersend: Relay
) -> None:
    """Matching a batch's events to messages and reading their relays is one query each,
    not one per event (acting cost 420 µs an event with a query per event, 194 without:
    docs/benchmarks.md)."""
    from sqlalchemy import event

    for i in range(40):
        post(client, body_of("activity.delivered", id=f"q{i}", email_id=f"E{i}"))
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        assert webhooks.process_pending() == 40
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert len(statements) <= 10, f"{len(statements)} statements for 40 events"
