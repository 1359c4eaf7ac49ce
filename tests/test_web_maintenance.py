"""Maintenance in the dashboard: start and end with a note, planned windows, the badge on the
relay page, the relays table and the overview tile, and the write-only webhook secret."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.crypto import SecretBox
from app.db import db
from app.models import Event, MaintenanceWindow, Message, Relay, utcnow
from app.services import maintenance
from tests.conftest import OPERATOR_EMAIL, SECRET

HX = {"HX-Request": "true"}
BY = f"operator {OPERATOR_EMAIL}"
BADGE = '<span class="badge state-maintenance">maintenance</span>'
WEBHOOK_SECRET = "whsec-Zq8rT1uVx0yW2"

AddRelay = Callable[..., Relay]


def fresh(relay: Relay) -> Relay:
    db.session.expire_all()
    row = db.session.get(Relay, relay.id)
    assert row is not None
    return row


def waiting(relay: Relay, status: str) -> Message:
    """Add a message held or deferred for a relay."""
    now = utcnow()
    row = Message(
        message_id=f"<{uuid.uuid4().hex}@test>",
        envelope_from="shop@example.com",
        recipients=["alice@example.org"],
        data=b"Subject: hi\r\n\r\nhi\r\n",
        size=20,
        status=status,
        next_attempt_at=now + timedelta(hours=1) if status == "deferred" else None,
        waiting_for_relay_id=relay.id,
        created_at=now,
        updated_at=now,
    )
    db.session.add(row)
    db.session.commit()
    return row


def html_of(client: FlaskClient, path: str, **headers: str) -> str:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_data(as_text=True)


def events(kind: str) -> list[Event]:
    return list(db.session.scalars(select(Event).where(Event.type == kind).order_by(Event.id)))


def plan_form(start: str, end: str, note: str | None = "ESP upgrade") -> dict[str, str]:
    data = {"plan-starts_at": start, "plan-ends_at": end}
    if note is not None:
        data["plan-note"] = note
    return data


def local(moment: datetime) -> str:
    """Write a time as a datetime-local input sends it."""
    return moment.strftime("%Y-%m-%dT%H:%M")


# -- start and end ----------------------------------------------------------------------


def test_starting_maintenance_shows_the_badge_on_the_page_the_table_and_the_tile(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server, maintenance_policy="hold")
    add_relay("backup", smtp_server)
    page = html_of(browser_client, f"/relays/{relay.id}/")
    assert "Start maintenance now" in page and 'name="maintenance-note"' in page
    assert BADGE not in page

    response = browser_client.post(
        f"/relays/{relay.id}/maintenance/start", data={"maintenance-note": "MailerSend upgrade"}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/relays/{relay.id}/"
    row = fresh(relay)
    assert row.maintenance_since is not None
    assert (row.maintenance_by, row.maintenance_reason) == (BY, "MailerSend upgrade")
    (started,) = events("maintenance_start")
    assert started.relay_id == relay.id and BY in started.detail
    waiting(relay, "held")
    waiting(relay, "held")

    page = html_of(browser_client, response.headers["Location"])
    assert "primary is in maintenance" in page  # the flash
    assert BADGE in page and "MailerSend upgrade" in page and BY in page
    assert "2 messages held for it." in page
    assert "End maintenance" in page and "Start maintenance now" not in page

    panel = html_of(browser_client, f"/relays/{relay.id}/maintenance", **HX)
    assert panel.lstrip().startswith('<div id="maintenance-panel"') and "<html" not in panel
    assert 'data-poll="2000"' in panel and 'hx-trigger="poll"' in panel
    assert f'hx-get="/relays/{relay.id}/maintenance"' in panel
    assert BADGE in panel and "MailerSend upgrade" in panel and "2 messages held" in panel

    rows = html_of(browser_client, "/relays/rows", **HX)
    primary_row = rows.split(f'<tr data-id="{relay.id}"')[1].split("</tr>")[0]
    assert BADGE in primary_row and "MailerSend upgrade" in primary_row
    assert "2 messages held" in primary_row
    assert f'href="/relays/{relay.id}/#maintenance"' in primary_row
    assert "End maintenance…" in primary_row
    backup_row = rows.split("</tr>")[1]
    assert BADGE not in backup_row and "End maintenance…" not in backup_row

    tiles = html_of(browser_client, "/partials/relays", **HX)
    assert 'class="tile state-maintenance"' in tiles and BADGE in tiles
    assert "MailerSend upgrade" in tiles and "2 messages held for it" in tiles
    assert BADGE in html_of(browser_client, "/")


def test_ending_maintenance_flashes_what_it_released(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server, maintenance_policy="hold")
    maintenance.start(relay, "webhook", "provider maintenance")
    waiting(relay, "held")
    waiting(relay, "held")
    waiting(relay, "deferred")
    page = html_of(browser_client, f"/relays/{relay.id}/")
    assert "End maintenance" in page and f'action="/relays/{relay.id}/maintenance/end' in page

    response = browser_client.post(
        f"/relays/{relay.id}/maintenance/end", data={"maintenance-note": "provider says done"}
    )
    assert response.status_code == 302
    assert fresh(relay).maintenance_since is None
    page = html_of(browser_client, response.headers["Location"])
    assert "Maintenance of primary ended: 2 held and 1 deferred messages go out" in page
    assert BADGE not in page and "Start maintenance now" in page
    (ended,) = events("maintenance_end")
    assert BY in ended.detail and "provider says done" in ended.detail
    assert ended.data is not None and (ended.data["held"], ended.data["deferred"]) == (2, 1)

    again = browser_client.post(
        f"/relays/{relay.id}/maintenance/end", data={"maintenance-note": "twice"}
    )
    assert "primary was not in maintenance." in html_of(browser_client, again.headers["Location"])
    assert len(events("maintenance_end")) == 1


def test_starting_twice_says_it_already_is(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server)
    maintenance.start(relay, "webhook", "MailerSend said so")
    response = browser_client.post(
        f"/relays/{relay.id}/maintenance/start", data={"maintenance-note": "me too"}
    )
    page = html_of(browser_client, response.headers["Location"])
    assert "primary is already in maintenance" in page and "by webhook" in page
    assert fresh(relay).maintenance_by == "webhook"
    assert len(events("maintenance_start")) == 1


@pytest.mark.parametrize("action", ["start", "end"])
@pytest.mark.parametrize(
    ("note", "message"),
    [
        ("   ", "Say why: the note is kept with the change."),
        ("x" * 501, "Keep the note under 500 characters."),
    ],
)
def test_start_and_end_need_a_short_note(
    browser_client: FlaskClient,
    add_relay: AddRelay,
    smtp_server: Any,
    action: str,
    note: str,
    message: str,
) -> None:
    relay = add_relay("primary", smtp_server)
    if action == "end":
        maintenance.start(relay, "webhook")
    before = fresh(relay).maintenance_since
    response = browser_client.post(
        f"/relays/{relay.id}/maintenance/{action}", data={"maintenance-note": note}
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    error = re.search(
        r'<small id="maintenance-note-error" class="field-error">([^<]*)</small>', html
    )
    assert error and message in error.group(1)
    assert 'aria-describedby="maintenance-note-error"' in html
    assert fresh(relay).maintenance_since == before
    assert len(events(f"maintenance_{action}")) == 0


# -- planned windows --------------------------------------------------------------------


def test_a_planned_window_is_listed_and_can_be_cancelled(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server)
    other = add_relay("other", smtp_server)
    starts = (utcnow() + timedelta(days=1)).replace(second=0, microsecond=0)
    ends = starts + timedelta(hours=2)
    maintenance.plan(other, starts, ends, "cli", "not this relay's")

    response = browser_client.post(
        f"/relays/{relay.id}/maintenance/plan", data=plan_form(local(starts), local(ends))
    )
    assert response.status_code == 302
    window = db.session.scalars(
        select(MaintenanceWindow).where(MaintenanceWindow.relay_id == relay.id)
    ).one()
    assert (window.starts_at, window.ends_at, window.state) == (starts, ends, "planned")
    assert (window.note, window.created_by) == ("ESP upgrade", BY)
    assert fresh(relay).maintenance_since is None  # planned, not started

    span = f"{starts:%Y-%m-%d %H:%M} to {ends:%Y-%m-%d %H:%M} UTC"
    page = html_of(browser_client, response.headers["Location"])
    assert f"Maintenance of primary planned from {starts:%Y-%m-%d %H:%M}" in page
    assert f"<strong>{span}</strong>" in page and "ESP upgrade" in page
    assert "not this relay&#39;s" not in page and "not this relay's" not in page
    assert 'type="datetime-local"' in page and "Starts (UTC)" in page and "Ends (UTC)" in page
    cancel = f"/relays/{relay.id}/maintenance/windows/{window.id}/cancel"
    assert f'action="{cancel}"' in page
    assert span in html_of(browser_client, f"/relays/{relay.id}/maintenance", **HX)

    cancelled = browser_client.post(cancel)
    assert cancelled.status_code == 302
    db.session.refresh(window)
    assert window.state == "cancelled"
    page = html_of(browser_client, cancelled.headers["Location"])
    assert f"Cancelled the maintenance of primary planned for {span}." in page
    assert f'action="{cancel}"' not in page

    twice = browser_client.post(cancel)
    assert "Not cancelled: window" in html_of(browser_client, twice.headers["Location"])
    other_window = db.session.scalars(
        select(MaintenanceWindow).where(MaintenanceWindow.relay_id == other.id)
    ).one()
    wrong = f"/relays/{relay.id}/maintenance/windows/{other_window.id}/cancel"
    assert browser_client.post(wrong).status_code == 404
    assert other_window.state == "planned"


def test_cancelling_a_window_under_way_ends_its_maintenance(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server, maintenance_policy="hold")
    now = utcnow()
    window = maintenance.plan(
        relay, now - timedelta(minutes=5), now + timedelta(hours=1), BY, "db move"
    )
    maintenance.tick()
    assert fresh(relay).maintenance_by == f"plan {window.id}"
    waiting(relay, "held")

    page = html_of(browser_client, f"/relays/{relay.id}/")
    assert "under way" in page and "Cancel and end now" in page and "db move" in page
    response = browser_client.post(f"/relays/{relay.id}/maintenance/windows/{window.id}/cancel")
    assert fresh(relay).maintenance_since is None
    (ended,) = events("maintenance_end")
    assert BY in ended.detail and ended.data is not None and ended.data["held"] == 1
    assert "primary is out of maintenance" in html_of(browser_client, response.headers["Location"])


@pytest.mark.parametrize(
    ("starts", "ends", "note", "field", "message"),
    [
        ("tomorrow", "+2", "upgrade", "plan-starts_at", "Not a date and time"),
        ("+1", "2030-13-45T99:00", "upgrade", "plan-ends_at", "Not a date and time"),
        ("", "+2", "upgrade", "plan-starts_at", "Give a date and time (UTC)."),
        ("+1", "+2", None, "plan-note", "Say why"),
        ("+1", "+2", "x" * 501, "plan-note", "Keep the note under 500 characters."),
        ("+2", "+1", "upgrade", "plan", "The window must end after it starts."),
        ("-3", "-2", "upgrade", "plan", "The window has already ended."),
    ],
)
def test_a_bad_window_is_refused_on_the_form_and_nothing_is_stored(
    browser_client: FlaskClient,
    add_relay: AddRelay,
    smtp_server: Any,
    starts: str,
    ends: str,
    note: str | None,
    field: str,
    message: str,
) -> None:
    relay = add_relay("primary", smtp_server)

    def when(value: str) -> str:
        if value[:1] in "+-" and value[1:].isdigit():
            return local(utcnow() + timedelta(hours=int(value)))
        return value

    response = browser_client.post(
        f"/relays/{relay.id}/maintenance/plan", data=plan_form(when(starts), when(ends), note)
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    error = re.search(rf'<(?:small|p) [^>]*id="{field}-error"[^>]*>([^<]*)</', html)
    assert error, f"no message for {field}"
    assert message in error.group(1)
    assert db.session.scalar(select(MaintenanceWindow.id)) is None
    assert events("maintenance_planned") == []
    assert fresh(relay).maintenance_since is None


# -- security ---------------------------------------------------------------------------


def test_maintenance_changes_need_a_csrf_token(
    app: Flask, operator: Any, add_relay: AddRelay, smtp_server: Any
) -> None:
    client = app.test_client()  # CSRF checks on, unlike browser_client
    with client.session_transaction() as session:
        session["_user_id"] = str(operator.id)
        session["_fresh"] = True
    relay = add_relay("primary", smtp_server)
    now = utcnow()
    window = maintenance.plan(relay, now + timedelta(hours=1), now + timedelta(hours=2), "cli")
    future = plan_form(local(now + timedelta(hours=3)), local(now + timedelta(hours=4)))
    for path in [
        f"/relays/{relay.id}/maintenance/start",
        f"/relays/{relay.id}/maintenance/end",
        f"/relays/{relay.id}/maintenance/plan",
        f"/relays/{relay.id}/maintenance/windows/{window.id}/cancel",
    ]:
        for headers in ({}, HX):
            response = client.post(path, data={"maintenance-note": "x", **future}, headers=headers)
            assert response.status_code == 400, path
    assert fresh(relay).maintenance_since is None
    db.session.refresh(window)
    assert window.state == "planned"
    assert len(list(db.session.scalars(select(MaintenanceWindow)))) == 1

    page = html_of(client, f"/relays/{relay.id}/")
    token = re.search(r'name="maintenance-csrf_token" type="hidden" value="([^"]+)"', page)
    assert token
    ok = client.post(
        f"/relays/{relay.id}/maintenance/start",
        data={"maintenance-csrf_token": token.group(1), "maintenance-note": "with a token"},
    )
    assert ok.status_code == 302
    assert fresh(relay).maintenance_reason == "with a token"


def test_the_relay_page_with_maintenance_carries_no_inline_script_or_style(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any
) -> None:
    relay = add_relay("primary", smtp_server)
    maintenance.start(relay, BY, "checking the page")
    now = utcnow()
    maintenance.plan(relay, now + timedelta(hours=1), now + timedelta(hours=2), BY, "later")
    for path in [f"/relays/{relay.id}/", "/relays/", "/", f"/relays/{relay.id}/maintenance"]:
        html = html_of(browser_client, path)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert " style=" not in html and "hx-on" not in html, path


# -- the webhook signing secret ---------------------------------------------------------


def relay_form(**changes: str) -> dict[str, str]:
    values = {
        "name": "mailersend",
        "host": "smtp.mailersend.net",
        "port": "587",
        "security": "starttls",
        "tls_verify": "y",
        "username": "",
        "password": "",
        "priority": "",
        "weight": "1",
        "provider": "mailersend",
        "max_per_connection": "5",
        "max_rate": "",
        "maintenance_policy": "hold",
        "webhook_secret": "",
        "breaker_threshold": "3",
        "breaker_open_seconds": "1800",
        "breaker_success_threshold": "1",
        "unknown_retries": "3",
    }
    values.update(changes)
    return values


def stored_secret(relay: Relay) -> str | None:
    row = fresh(relay)
    if row.webhook_secret_encrypted is None:
        return None
    return SecretBox([SECRET]).decrypt(row.webhook_secret_encrypted)


def test_the_webhook_secret_is_write_only_and_a_blank_keeps_it(
    browser_client: FlaskClient,
) -> None:
    blank = html_of(browser_client, "/relays/new")
    assert "Webhook signing secret" in blank and "(not set)" in blank
    assert "http://localhost/hooks/mailersend" in blank
    assert "During maintenance" in blank

    created = browser_client.post("/relays/new", data=relay_form(webhook_secret=WEBHOOK_SECRET))
    assert created.status_code == 302
    relay = db.session.scalars(select(Relay)).one()
    assert stored_secret(relay) == WEBHOOK_SECRET
    assert relay.maintenance_policy == "hold"

    responses = [
        browser_client.get(created.headers["Location"]),
        browser_client.get("/relays/"),
        browser_client.get("/relays/rows", headers=HX),
        browser_client.get("/"),
        browser_client.get(f"/relays/{relay.id}/edit"),
        browser_client.post(f"/relays/{relay.id}/edit", data=relay_form(port="70000")),
        browser_client.post(
            f"/relays/{relay.id}/edit",
            data=relay_form(port="70000", webhook_secret="typed-again-1"),
        ),
    ]
    for response in responses:
        html = response.get_data(as_text=True)
        assert response.status_code == 200
        assert WEBHOOK_SECRET not in html and "typed-again-1" not in html
        assert re.search(r'<input[^>]*type="password"[^>]*value="[^"]', html) is None
    edit = responses[4].get_data(as_text=True)
    assert "(set)" in edit and "leave blank to keep it" in edit
    assert re.search(r'<input[^>]*id="webhook_secret"[^>]*type="password"', edit)

    kept = browser_client.post(f"/relays/{relay.id}/edit", data=relay_form(max_per_connection="4"))
    assert kept.status_code == 302
    assert stored_secret(relay) == WEBHOOK_SECRET and fresh(relay).max_per_connection == 4

    changed = browser_client.post(
        f"/relays/{relay.id}/edit", data=relay_form(webhook_secret="whsec-rotated-2")
    )
    assert changed.status_code == 302
    assert stored_secret(relay) == "whsec-rotated-2"


@pytest.mark.parametrize("secret", ["short1", "has a space in it", "x" * 257])
def test_a_bad_webhook_secret_is_refused_beside_the_field(
    browser_client: FlaskClient, add_relay: AddRelay, smtp_server: Any, secret: str
) -> None:
    response = browser_client.post("/relays/new", data=relay_form(webhook_secret=secret))
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    error = re.search(r'<small id="webhook_secret-error" class="field-error">([^<]*)</small>', html)
    assert error and "256" in error.group(1)
    assert secret not in html
    assert db.session.scalar(select(Relay.id)) is None

    relay = add_relay("primary", smtp_server, webhook_secret=WEBHOOK_SECRET)
    edited = browser_client.post(
        f"/relays/{relay.id}/edit",
        data=relay_form(name="primary", port="2525", webhook_secret=secret),
    )
    assert edited.status_code == 200
    assert stored_secret(relay) == WEBHOOK_SECRET and fresh(relay).port == smtp_server.port
