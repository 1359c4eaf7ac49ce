"""The relays area: the live table, add and edit, test connection, order, circuits, test mail."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.crypto import SecretBox
from app.db import db
from app.domain.mime import Mailbox, MessageSpec, build_message
from app.models import Attempt, Event, HealthCheck, Message, Relay, utcnow
from app.services import queue, relays
from app.services.delivery import DeliveryEngine
from tests.conftest import OPERATOR_EMAIL, SECRET

HX = {"HX-Request": "true"}
PASSWORD = "s3cret-pass"

AddRelay = Callable[..., Relay]


def form_for(
    name: str = "primary", host: str = "smtp.example.com", **changes: Any
) -> dict[str, Any]:
    """Return a valid add-relay form, with changes."""
    values: dict[str, Any] = {
        "name": name,
        "host": host,
        "port": "587",
        "security": "starttls",
        "tls_verify": "y",
        "username": "",
        "password": "",
        "priority": "",
        "weight": "1",
        "provider": "generic",
        "max_per_connection": "100",
        "max_rate": "",
        "maintenance_policy": "reroute",
        "breaker_threshold": "3",
        "breaker_open_seconds": "1800",
        "breaker_success_threshold": "1",
        "unknown_retries": "3",
    }
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def order_of(html: str) -> list[int]:
    """Return the relay ids of the table rows, top to bottom."""
    return [int(i) for i in re.findall(r'<tr data-id="(\d+)"', html)]


def stored_password(relay: Relay) -> str | None:
    db.session.refresh(relay)
    if relay.password_encrypted is None:
        return None
    return SecretBox([SECRET]).decrypt(relay.password_encrypted)


# -- the table --------------------------------------------------------------------------


def test_the_list_shows_relays_in_priority_order_with_circuit_badges(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    backup = add_relay("backup", smtp_server, priority=20)
    primary = add_relay("primary", smtp_server, priority=10)
    broken = add_relay("broken", smtp_server, priority=30, enabled=False)
    relays.force_circuit(broken, "open", "provider outage")

    html = browser_client.get("/relays/").get_data(as_text=True)

    assert order_of(html) == [primary.id, backup.id, broken.id]
    assert html.count('<span class="badge state-closed">closed</span>') == 2
    assert '<span class="badge state-open">open</span>' in html
    assert '<span class="badge state-disabled">disabled</span>' in html
    assert f"{smtp_server.host}:{smtp_server.port}" in html
    assert 'title="provider outage"' in html  # the circuit's reason on hover
    assert "vendor/Sortable.min.js" in html


def test_an_empty_list_says_what_to_do_next(browser_client: FlaskClient) -> None:
    html = browser_client.get("/relays/").get_data(as_text=True)
    assert "No relays yet — add your first relay" in html
    assert 'href="/relays/new"' in html


def test_htmx_gets_the_table_body_alone_and_every_answer_varies_on_it(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    add_relay("primary", smtp_server)
    page = browser_client.get("/relays/")
    partial = browser_client.get("/relays/", headers=HX)
    rows = browser_client.get("/relays/rows", headers=HX)

    assert "<html" in page.get_data(as_text=True) and "<thead>" in page.get_data(as_text=True)
    for response in (partial, rows):
        body = response.get_data(as_text=True)
        assert body.lstrip().startswith('<tbody id="relay-rows"'), body[:200]
        assert "<html" not in body and "<thead>" not in body
        assert 'data-poll="2000"' in body and 'hx-trigger="poll"' in body
        assert 'hx-get="/relays/rows"' in body and 'hx-swap="outerHTML"' in body
    for response in (page, partial, rows):
        assert "HX-Request" in response.headers["Vary"]


def test_the_table_counts_each_relays_sends_and_failures_of_the_last_hour(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    primary = add_relay("primary", smtp_server)
    backup = add_relay("backup", smtp_server)
    spec = MessageSpec(
        sender=Mailbox("shop@example.com"),
        to=[Mailbox("alice@example.org")],
        cc=[],
        bcc=[],
        reply_to=None,
        subject="Your order",
        text="Thanks!",
        html=None,
        attachments=[],
        headers={},
        received=[],
    )
    message_id = queue.enqueue(build_message(spec, max_bytes=10_000)).id
    now = utcnow()
    for relay, outcome, minutes_ago in [
        (primary, "sent", 1),
        (primary, "sent", 5),
        (primary, "failover", 10),
        (primary, "sent", 90),  # older than an hour: not counted
        (backup, "deferred", 2),
        (backup, "partial", 3),
    ]:
        db.session.add(
            Attempt(
                message_id=message_id,
                relay_id=relay.id,
                relay_name=relay.name,
                at=now - timedelta(minutes=minutes_ago),
                outcome=outcome,
            )
        )
    db.session.commit()

    stats = relays.stats_last_hour()
    assert stats[primary.id] == relays.RelayStats(sent=2, failed=1)
    assert stats[backup.id] == relays.RelayStats(sent=1, failed=1)

    html = browser_client.get("/relays/rows", headers=HX).get_data(as_text=True)
    primary_row = html.split(f'<tr data-id="{primary.id}"')[1].split("</tr>")[0]
    assert '<td data-label="Sent, 1 h" class="num">2</td>' in primary_row
    assert '<strong class="field-error">1</strong>' in primary_row


# -- add and edit -----------------------------------------------------------------------


def test_adding_a_relay_stores_it_at_the_end_and_says_so(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    add_relay("first", smtp_server, priority=10)
    response = browser_client.post(
        "/relays/new",
        data=form_for(
            "sendgrid",
            "smtp.sendgrid.net",
            provider="sendgrid",
            max_rate="12.5",
            unknown_retries="1",
        ),
    )
    relay = db.session.scalar(select(Relay).where(Relay.name == "sendgrid"))
    assert relay is not None
    assert response.status_code == 302
    assert response.headers["Location"] == f"/relays/{relay.id}/"
    assert (relay.host, relay.port, relay.security, relay.provider) == (
        "smtp.sendgrid.net",
        587,
        "starttls",
        "sendgrid",
    )
    assert relay.max_rate == 12.5 and relay.priority == 20 and relay.tls_verify
    assert relay.unknown_retries == 1
    page = browser_client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Added sendgrid. Test its connection next." in page


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"port": "70000"}, "port", "A port is a number from 1 to 65535."),
        ({"port": "0"}, "port", "A port is a number from 1 to 65535."),
        ({"security": "smtps"}, "security", "Not a valid choice"),
        ({"host": ""}, "host", "This field is required."),
        ({"host": "smtp.example.com:587"}, "host", "Put the port in the Port field."),
        ({"host": "smtp://smtp.example.com"}, "host", "without a scheme"),
        ({"name": ""}, "name", "This field is required."),
        ({"username": "apikey"}, "password", "Give the password for this username."),
        ({"password": "orphan"}, "password", "A password needs a username."),
        ({"provider": "postmark"}, "provider", "Not a valid choice"),
        ({"maintenance_policy": "drop"}, "maintenance_policy", "Not a valid choice"),
        ({"breaker_threshold": "0"}, "breaker_threshold", "At least 1."),
        ({"max_rate": "0"}, "max_rate", "More than 0, or leave blank."),
        ({"unknown_retries": "-1"}, "unknown_retries", "0 to 100."),
    ],
)
def test_the_add_form_shows_what_is_wrong_beside_the_field(
    browser_client: FlaskClient, changes: dict[str, str], field: str, message: str
) -> None:
    response = browser_client.post("/relays/new", data=form_for(**changes))
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    error = re.search(rf'<small id="{field}-error" class="field-error">([^<]*)</small>', html)
    assert error, f"no message beside {field}"
    assert message in error.group(1)
    assert f'aria-describedby="{field}-error"' in html
    assert db.session.scalar(select(Relay.id)) is None


def test_a_duplicate_name_is_refused_on_the_form(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    add_relay("primary", smtp_server)
    backup = add_relay("backup", smtp_server)
    added = browser_client.post("/relays/new", data=form_for("primary"))
    assert "A relay named &#39;primary&#39; already exists." in added.get_data(as_text=True)

    renamed = browser_client.post(f"/relays/{backup.id}/edit", data=form_for("primary"))
    html = renamed.get_data(as_text=True)
    assert renamed.status_code == 200
    assert '<small id="name-error" class="field-error">A relay named' in html
    db.session.refresh(backup)
    assert backup.name == "backup"


def test_editing_changes_the_relay_and_a_blank_priority_keeps_its_place(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server, priority=40)
    page = browser_client.get(f"/relays/{relay.id}/edit").get_data(as_text=True)
    assert 'value="primary"' in page and f'value="{smtp_server.port}"' in page

    response = browser_client.post(
        f"/relays/{relay.id}/edit",
        data=form_for("primary-eu", "smtp.eu.example.com", port="2525", security="tls"),
    )
    assert response.status_code == 302
    db.session.refresh(relay)
    assert (relay.name, relay.host, relay.port, relay.security) == (
        "primary-eu",
        "smtp.eu.example.com",
        2525,
        "tls",
    )
    assert relay.priority == 40
    assert "Saved primary-eu." in browser_client.get(response.headers["Location"]).get_data(
        as_text=True
    )


def test_the_password_is_write_only(browser_client: FlaskClient) -> None:
    created = browser_client.post(
        "/relays/new", data=form_for(username="apikey", password=PASSWORD)
    )
    assert created.status_code == 302
    relay = db.session.scalars(select(Relay)).one()
    assert stored_password(relay) == PASSWORD

    responses = [
        browser_client.get("/relays/"),
        browser_client.get("/relays/rows", headers=HX),
        browser_client.get(f"/relays/{relay.id}/"),
        browser_client.get(f"/relays/{relay.id}/edit"),
        browser_client.post(f"/relays/{relay.id}/edit", data=form_for(port="70000")),
        browser_client.get(created.headers["Location"]),
    ]
    for response in responses:
        html = response.get_data(as_text=True)
        assert response.status_code == 200
        assert PASSWORD not in html
        assert re.search(r'<input[^>]*type="password"[^>]*value="[^"]', html) is None

    kept = browser_client.post(
        f"/relays/{relay.id}/edit", data=form_for(username="apikey", password="")
    )
    assert kept.status_code == 302
    assert stored_password(relay) == PASSWORD

    changed = browser_client.post(
        f"/relays/{relay.id}/edit", data=form_for(username="apikey", password="n3w-pass")
    )
    assert changed.status_code == 302
    assert stored_password(relay) == "n3w-pass"

    dropped = browser_client.post(f"/relays/{relay.id}/edit", data=form_for(username=""))
    assert dropped.status_code == 302
    assert stored_password(relay) is None and relay.username is None


# -- test connection --------------------------------------------------------------------


def test_test_connection_shows_each_step_with_its_time(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server)
    response = browser_client.post(f"/relays/{relay.id}/test", headers=HX)
    html = response.get_data(as_text=True)

    assert response.status_code == 200 and "<html" not in html
    assert "HX-Request" in response.headers["Vary"]
    assert "connection ok" in html
    for step in ("Connect", "EHLO", "NOOP"):
        assert re.search(rf"<strong>{step}</strong>\s*<span class=\"relays-ms\">[\d.]+ ms", html)
    assert "250" in html  # the server's own NOOP reply
    assert "primary: connection ok in" in response.headers["HX-Trigger"]

    check = db.session.scalars(select(HealthCheck)).one()
    assert check.ok and check.trigger == "operator" and check.relay_id == relay.id
    assert [step["name"] for step in check.steps] == ["connect", "ehlo", "noop"]


def test_test_connection_to_a_refusing_server_shows_the_error(
    browser_client: FlaskClient, add_relay: AddRelay, refusing_server: Any
) -> None:
    relay = add_relay("dead", refusing_server)
    response = browser_client.post(f"/relays/{relay.id}/test", headers=HX)
    html = response.get_data(as_text=True)

    assert "connection failed" in html
    assert "<code>connection refused</code>" in html
    assert "<strong>EHLO</strong> not reached" in html
    assert '"category": "error"' in response.headers["HX-Trigger"]
    check = db.session.scalars(select(HealthCheck)).one()
    assert not check.ok and check.error == "connection refused"


def test_test_connection_with_wrong_credentials_shows_the_servers_535(
    browser_client: FlaskClient,
    add_relay: AddRelay,
    smtp_server_factory: Callable[..., Any],
) -> None:
    server = smtp_server_factory(auth=("apikey", "right-password"))
    relay = add_relay("primary", server, username="apikey", password="wrong-password")
    html = browser_client.post(f"/relays/{relay.id}/test", headers=HX).get_data(as_text=True)

    failed = re.search(r'<li class="fail">(.*?)</li>', html, re.S)
    assert failed, html
    assert "<strong>AUTH</strong>" in failed.group(1)
    assert "535" in failed.group(1)
    assert "<strong>NOOP</strong> not reached" in html
    assert "wrong-password" not in html


def test_without_htmx_test_connection_is_a_page(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server)
    response = browser_client.post(f"/relays/{relay.id}/test")
    html = response.get_data(as_text=True)
    assert "<html" in html and "Connection test" in html and "connection ok" in html
    assert "HX-Request" in response.headers["Vary"]


# -- enable, delete, order --------------------------------------------------------------


def test_the_toggle_disables_and_enables_a_relay(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server)
    off = browser_client.post(f"/relays/{relay.id}/toggle", headers=HX)
    html = off.get_data(as_text=True)
    db.session.refresh(relay)
    assert not relay.enabled
    assert html.lstrip().startswith('<tbody id="relay-rows"')
    assert '<span class="badge state-disabled">disabled</span>' in html
    assert ">Enable</button>" in html
    assert "Disabled primary" in off.headers["HX-Trigger"]

    on = browser_client.post(f"/relays/{relay.id}/toggle")  # a plain form: flash and redirect
    db.session.refresh(relay)
    assert relay.enabled
    assert on.status_code == 302 and on.headers["Location"] == "/relays/"
    assert "Enabled primary." in browser_client.get("/relays/").get_data(as_text=True)


def test_delete_asks_first_then_removes_the_relay(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    primary = add_relay("primary", smtp_server)
    backup = add_relay("backup", smtp_server)
    page = browser_client.get("/relays/").get_data(as_text=True)
    assert 'hx-confirm="Delete the relay primary?' in page

    confirm = browser_client.get(f"/relays/{primary.id}/delete").get_data(as_text=True)
    assert "Delete primary?" in confirm and 'method="post"' in confirm
    assert db.session.get(Relay, primary.id) is not None  # asking deletes nothing

    gone = browser_client.post(f"/relays/{primary.id}/delete", headers=HX)
    assert db.session.get(Relay, primary.id) is None
    assert order_of(gone.get_data(as_text=True)) == [backup.id]
    assert "Deleted primary." in gone.headers["HX-Trigger"]

    browser_client.post(f"/relays/{backup.id}/delete")
    assert "No relays yet" in browser_client.get("/relays/").get_data(as_text=True)


def test_a_dropped_order_is_saved_as_priorities(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    a, b, c = (add_relay(name, smtp_server) for name in ("a", "b", "c"))
    response = browser_client.post(
        "/relays/reorder", data={"order": f"{c.id},{a.id},{b.id}"}, headers=HX
    )

    assert order_of(response.get_data(as_text=True)) == [c.id, a.id, b.id]
    assert [r.priority for r in (c, a, b)] == [10, 20, 30]
    assert "New order saved." in response.headers["HX-Trigger"]
    # every operator's next poll shows it
    assert order_of(browser_client.get("/relays/rows", headers=HX).get_data(as_text=True)) == [
        c.id,
        a.id,
        b.id,
    ]


def test_a_stale_order_keeps_relays_it_does_not_name(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    a, b, c = (add_relay(name, smtp_server) for name in ("a", "b", "c"))
    browser_client.post("/relays/reorder", data={"order": f"{b.id},{a.id},999"})
    assert [r.name for r in relays.ordered()] == ["b", "a", "c"]


def test_a_garbled_order_changes_nothing(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    a, b = (add_relay(name, smtp_server) for name in ("a", "b"))
    for order in ("x,y", f"{a.id},{a.id}"):
        response = browser_client.post("/relays/reorder", data={"order": order}, headers=HX)
        assert '"category": "error"' in response.headers["HX-Trigger"]
    assert [r.name for r in relays.ordered()] == ["a", "b"]


def test_the_arrows_move_a_relay_one_place(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    a, b, c = (add_relay(name, smtp_server) for name in ("a", "b", "c"))
    page = browser_client.get("/relays/").get_data(as_text=True)
    assert 'aria-label="Move c up"' in page and 'aria-label="Move a down"' in page

    up = browser_client.post(f"/relays/{c.id}/move?direction=up", headers=HX)
    assert order_of(up.get_data(as_text=True)) == [a.id, c.id, b.id]
    down = browser_client.post(f"/relays/{a.id}/move?direction=down", headers=HX)
    assert order_of(down.get_data(as_text=True)) == [c.id, a.id, b.id]
    assert [r.priority for r in relays.ordered()] == [10, 20, 30]

    edge = browser_client.post(f"/relays/{c.id}/move?direction=up", headers=HX)
    assert "c is already first." in edge.headers["HX-Trigger"]
    assert browser_client.post(f"/relays/{c.id}/move?direction=sideways").status_code == 400


# -- circuits ---------------------------------------------------------------------------


def test_an_operator_forces_a_circuit_open_and_closed_with_a_note(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server)
    opened = browser_client.post(
        f"/relays/{relay.id}/circuit", data={"state": "open", "note": "SendGrid incident #42"}
    )
    assert opened.status_code == 302
    db.session.refresh(relay)
    assert relay.circuit_state == "open" and relay.circuit_reason == "SendGrid incident #42"
    assert relay.circuit_open_until is not None and relay.circuit_changed_at is not None
    page = browser_client.get(opened.headers["Location"]).get_data(as_text=True)
    assert "Circuit of primary forced open." in page

    browser_client.post(
        f"/relays/{relay.id}/circuit", data={"state": "closed", "note": "incident resolved"}
    )
    db.session.refresh(relay)
    assert relay.circuit_state == "closed" and relay.circuit_failures == 0

    events = db.session.scalars(select(Event).order_by(Event.id)).all()
    assert [e.type for e in events] == ["circuit_open", "circuit_closed"]
    assert events[0].relay_id == relay.id
    assert events[0].data == {
        "relay": "primary",
        "from": "closed",
        "to": "open",
        "reason": "SendGrid incident #42",
        "by": OPERATOR_EMAIL,
    }
    assert events[1].data is not None and events[1].data["from"] == "open"
    assert OPERATOR_EMAIL in events[1].detail


def test_forcing_a_circuit_needs_a_note(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server)
    response = browser_client.post(
        f"/relays/{relay.id}/circuit", data={"state": "open", "note": "  "}
    )
    assert response.status_code == 200
    assert "Say why: the note is kept with the change." in response.get_data(as_text=True)
    bad_state = browser_client.post(
        f"/relays/{relay.id}/circuit", data={"state": "half_open", "note": "why not"}
    )
    assert "Not a valid choice" in bad_state.get_data(as_text=True)
    db.session.refresh(relay)
    assert relay.circuit_state == "closed"
    assert db.session.scalar(select(Event.id)) is None


# -- send a test email ------------------------------------------------------------------


def test_send_test_queues_a_message_only_that_relay_may_carry(
    app: Flask,
    browser_client: FlaskClient,
    add_relay: AddRelay,
    smtp_server_factory: Callable[..., Any],
    engine: DeliveryEngine,
) -> None:
    first_server, target_server = smtp_server_factory(), smtp_server_factory()
    add_relay("first", first_server, priority=10)
    target = add_relay("target", target_server, priority=20)

    response = browser_client.post(
        f"/relays/{target.id}/send-test", data={"recipient": "me@example.org"}
    )
    assert response.status_code == 302
    message = db.session.scalars(select(Message)).one()
    assert message.pinned_relay_id == target.id
    assert message.tags == ["relayboard-test"]
    assert message.envelope_from == OPERATOR_EMAIL and message.recipients == ["me@example.org"]
    assert message.subject == "Relayboard test through target"
    page = browser_client.get(response.headers["Location"]).get_data(as_text=True)
    assert f'Queued test message <a href="/messages/{message.id}">#{message.id}</a>' in page
    assert first_server.received == [] and target_server.received == []  # the web sent nothing

    engine.run_pass()
    assert len(target_server.wait_for(1)) == 1 and first_server.received == []


def test_send_test_refuses_a_bad_address_beside_the_field(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server)
    response = browser_client.post(
        f"/relays/{relay.id}/send-test", data={"recipient": "not-an-address"}
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert '<small id="recipient-error" class="field-error">That is not an email address.' in html
    assert db.session.scalar(select(Message.id)) is None


# -- security ---------------------------------------------------------------------------


def test_every_change_needs_a_csrf_token(
    app: Flask, operator: Any, add_relay: AddRelay, smtp_server: Any
) -> None:
    client = app.test_client()  # CSRF checks on, unlike browser_client
    with client.session_transaction() as session:
        session["_user_id"] = str(operator.id)
        session["_fresh"] = True
    relay = add_relay("primary", smtp_server)
    for path in [
        f"/relays/{relay.id}/toggle",
        f"/relays/{relay.id}/delete",
        f"/relays/{relay.id}/move?direction=down",
        f"/relays/{relay.id}/circuit",
        f"/relays/{relay.id}/test",
        f"/relays/{relay.id}/send-test",
        "/relays/reorder",
        "/relays/new",
        f"/relays/{relay.id}/edit",
    ]:
        response = client.post(path, data={"state": "open", "note": "x"}, headers=HX)
        assert response.status_code == 400, path
    db.session.refresh(relay)
    assert relay.enabled and relay.circuit_state == "closed"

    page = client.get("/relays/").get_data(as_text=True)
    token = re.search(r'"X-CSRFToken": "([^"]+)"', page)
    assert token
    ok = client.post(f"/relays/{relay.id}/toggle", headers={**HX, "X-CSRFToken": token.group(1)})
    assert ok.status_code == 200
    db.session.refresh(relay)
    assert not relay.enabled


def test_relay_pages_carry_no_inline_script_or_style(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server)
    relays.force_circuit(relay, "open", "checking the page")
    for path in [
        "/relays/",
        "/relays/new",
        f"/relays/{relay.id}/",
        f"/relays/{relay.id}/edit",
        f"/relays/{relay.id}/delete",
    ]:
        html = browser_client.get(path).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert " style=" not in html and "hx-on" not in html, path


def test_a_missing_relay_is_a_404(browser_client: FlaskClient) -> None:
    assert browser_client.get("/relays/99/").status_code == 404
    assert browser_client.post("/relays/99/toggle").status_code == 404
