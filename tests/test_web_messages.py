"""Messages area: filters, the message page, retry now, cancel, bulk actions, CSRF."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from app.db import db
from app.models import Event, Message, utcnow
from app.services.delivery import DeliveryEngine
from tests.conftest import OPERATOR_EMAIL

HTMX = {"HX-Request": "true"}
ON_BOTH_DATABASES = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)


def message(pk: int) -> Message:
    db.session.expire_all()
    row = db.session.get(Message, pk)
    assert row is not None
    return row


def events(pk: int, kind: str) -> list[Event]:
    return list(
        db.session.scalars(
            select(Event).where(Event.message_id == pk, Event.type == kind).order_by(Event.id)
        )
    )


def listed(client: FlaskClient, query: str = "") -> list[int]:
    """The message ids the list shows for a query string, in order."""
    response = client.get(f"/messages/?{query}", headers=HTMX)
    assert response.status_code == 200
    return [int(pk) for pk in re.findall(r'<tr data-id="(\d+)"', response.get_data(as_text=True))]


def flash_of(response: Any) -> dict[str, str]:
    flash: dict[str, str] = json.loads(response.headers["HX-Trigger"])["flash"]
    return flash


def set_status(pk: int, status: str, **values: Any) -> None:
    """Put a message in a state (for states delivery would take minutes to reach)."""
    db.session.execute(update(Message).where(Message.id == pk).values(status=status, **values))
    db.session.commit()


def defer(pk: int) -> None:
    set_status(pk, "deferred", next_attempt_at=utcnow() + timedelta(hours=1))


@pytest.fixture
def delivered(
    smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> dict[str, int]:
    """Two messages sent through the primary, then two left queued."""
    add_relay("primary", smtp_server)
    ids = {
        "welcome": send(to=["alice@example.org"], tags=["welcome", "onboarding"])["id"],
        "invoice": send(to=["Carol.Big@Example.com"], tags=["invoice"])["id"],
    }
    engine.run_pass()
    smtp_server.wait_for(2)
    ids["queued"] = send(to=["bob@example.net"], tags=["welcome-back"])["id"]
    ids["queued2"] = send(to=["dave@example.net", "alice@example.org"], tags=["new_user"])["id"]
    return ids


@ON_BOTH_DATABASES
def test_the_list_filters_by_status(browser_client: FlaskClient, delivered: dict[str, int]) -> None:
    d = delivered
    assert listed(browser_client) == [d["queued2"], d["queued"], d["invoice"], d["welcome"]]
    assert listed(browser_client, "status=sent") == [d["invoice"], d["welcome"]]
    assert listed(browser_client, "status=queued") == [d["queued2"], d["queued"]]
    assert listed(browser_client, "status=failed") == []


@ON_BOTH_DATABASES
def test_the_list_filters_by_recipient_substring_ignoring_case(
    browser_client: FlaskClient, delivered: dict[str, int]
) -> None:
    d = delivered
    assert listed(browser_client, "recipient=alice") == [d["queued2"], d["welcome"]]
    assert listed(browser_client, "recipient=CAROL.big@") == [d["invoice"]]
    assert listed(browser_client, "recipient=example.net") == [d["queued2"], d["queued"]]
    assert listed(browser_client, "recipient=%25") == []  # a LIKE wildcard is a plain character


@ON_BOTH_DATABASES
def test_the_list_filters_by_whole_tag(
    browser_client: FlaskClient, delivered: dict[str, int]
) -> None:
    d = delivered
    assert listed(browser_client, "tag=welcome") == [d["welcome"]]  # not "welcome-back"
    assert listed(browser_client, "tag=onboarding") == [d["welcome"]]
    assert listed(browser_client, "tag=welcome-back") == [d["queued"]]
    assert listed(browser_client, "tag=new_user") == [d["queued2"]]
    assert listed(browser_client, "tag=welcome_back") == []  # "_" is no wildcard
    assert listed(browser_client, "tag=new") == []
    assert listed(browser_client, "tag=welcome&status=queued") == []


@ON_BOTH_DATABASES
def test_the_list_filters_by_time(browser_client: FlaskClient, delivered: dict[str, int]) -> None:
    d = delivered
    now = utcnow().replace(second=0, microsecond=0)
    db.session.execute(
        update(Message).where(Message.id == d["welcome"]).values(created_at=now - timedelta(days=2))
    )
    db.session.commit()
    since = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert d["welcome"] not in listed(browser_client, f"since={since}")
    assert len(listed(browser_client, f"since={since}")) == 3
    assert listed(browser_client, f"until={since}") == [d["welcome"]]
    window = f"since={(now - timedelta(days=3)):%Y-%m-%dT%H:%M}&until={since}"
    assert listed(browser_client, window) == [d["welcome"]]


def test_the_list_pages_by_id(
    browser_client: FlaskClient, send: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.web.messages import routes

    monkeypatch.setattr(routes, "PAGE_SIZE", 2)
    ids = [send()["id"] for _ in range(5)]
    first = browser_client.get("/messages/").get_data(as_text=True)
    assert f"before={ids[3]}" in first and "5</strong> matching" in first
    assert listed(browser_client, f"before={ids[3]}") == [ids[2], ids[1]]
    assert listed(browser_client, f"before={ids[1]}") == [ids[0]]


def test_htmx_gets_the_results_alone_and_both_vary_on_hx_request(
    browser_client: FlaskClient, delivered: dict[str, int]
) -> None:
    page = browser_client.get("/messages/?status=sent")
    html = page.get_data(as_text=True)
    assert "<html" in html and 'id="filters"' in html and 'id="results"' in html
    assert "HX-Request" in page.headers["Vary"]
    part = browser_client.get("/messages/?status=sent", headers=HTMX)
    fragment = part.get_data(as_text=True)
    assert "<html" not in fragment and 'id="filters"' not in fragment
    assert fragment.lstrip().startswith('<section id="results"')
    assert "HX-Request" in part.headers["Vary"]
    # The partial polls itself with the same filter, and reloads on filter changes.
    assert 'hx-get="/messages/?status=sent" hx-trigger="poll" data-poll="5000"' in fragment
    assert 'hx-trigger="change, submit" hx-push-url="true"' in html
    # The back button asks for the whole page.
    restore = browser_client.get(
        "/messages/?status=sent", headers={**HTMX, "HX-History-Restore-Request": "true"}
    )
    assert "<html" in restore.get_data(as_text=True)


def test_an_empty_list_says_what_to_do(browser_client: FlaskClient, send: Any) -> None:
    html = browser_client.get("/messages/").get_data(as_text=True)
    assert "No messages yet — send one with POST /api/send" in html
    send()
    none = browser_client.get("/messages/?status=failed").get_data(as_text=True)
    assert "No messages match this filter" in none and "Retry all" not in none


def test_bad_filter_input_is_shown_beside_the_field(
    browser_client: FlaskClient, delivered: dict[str, int]
) -> None:
    response = browser_client.get("/messages/?status=bogus&since=yesterday&until=2030-01-01T00:00")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert re.search(r'id="f-status-error" class="field-error">Not a valid choice', html)
    assert re.search(r'id="f-since-error" class="field-error">Not a valid datetime value', html)
    assert 'id="f-until-error" class="field-error"></small>' in html
    assert 'aria-invalid="true"' in html and "Fix the filter" in html
    assert "<tr data-id" not in html and 'data-poll="5000"' not in html
    # An htmx filter change updates the error slots beside the fields out of band.
    part = browser_client.get(
        "/messages/?until=2020-01-01T00:00&since=2021-01-01T00:00", headers=HTMX
    )
    fragment = part.get_data(as_text=True)
    assert re.search(
        r'id="f-until-error" class="field-error" hx-swap-oob="true">Must be after', fragment
    )
    fixed = browser_client.get("/messages/?status=sent", headers=HTMX).get_data(as_text=True)
    assert 'id="f-status-error" class="field-error" hx-swap-oob="true"></small>' in fixed
    assert browser_client.get("/messages/?before=abc").status_code == 200


def test_the_message_page_shows_attempts_events_links_and_escaped_headers(
    browser_client: FlaskClient,
    refusing_server: Any,
    smtp_server: Any,
    add_relay: Any,
    send: Any,
    engine: DeliveryEngine,
) -> None:
    add_relay("primary", refusing_server, priority=1)
    add_relay("backup", smtp_server, priority=2)
    queued = send(
        subject="<script>alert('x')</script> order",
        text="Track it: https://shop.example.com/track?id=1&x=<b>",
        html='<p><a href="https://shop.example.com/orders/1">order</a>'
        '<img src="javascript:alert(1)"></p>',
        headers={"X-Campaign": "<img src=x onerror=alert(1)>"},
        tags=["orders"],
    )
    engine.run_pass()
    smtp_server.wait_for(1)
    response = browser_client.get(f"/messages/{queued['id']}")
    assert response.status_code == 200 and "HX-Request" in response.headers["Vary"]
    html = response.get_data(as_text=True)
    # Header.
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; order" in html
    assert "<script>alert" not in html and "<img src=x" not in html
    assert html.count("state-sent") >= 1 and queued["message_id"].strip("<>") in html
    assert '<span class="tag">orders</span>' in html and "backup" in html
    # Timeline: the refused attempt, the failover with its reason, the good attempt, the event.
    timeline = html[html.index('id="timeline"') : html.index('id="links"')]
    assert "via <strong>primary</strong>" in timeline and "via <strong>backup</strong>" in timeline
    assert "primary → backup" in timeline and "refused" in timeline
    assert "<code>250</code>" in timeline and "delivered to 1 recipient(s) via backup" in timeline
    order = [
        timeline.index(s)
        for s in (
            "<strong>queued",
            "via <strong>primary",
            "<strong>failover",
            "via <strong>backup",
            "<strong>sent",
        )
    ]
    assert order == sorted(order)
    # Links, as text, escaped; never javascript:.
    links = html[html.index('id="links"') : html.index('id="headers"')]
    assert "<code>https://shop.example.com/orders/1</code>" in links
    assert "https://shop.example.com/track?id=1&amp;x=" in links
    assert "javascript" not in links and '<a href="https://shop' not in links
    # Headers of the stored MIME, escaped, in a collapsed <details>.
    headers = html[html.index('id="headers"') :]
    assert "<details>" in headers and "X-Campaign" in headers
    assert "&lt;img src=x onerror=alert(1)&gt;" in headers
    assert "Message-ID" in headers and "alert(&#39;x&#39;)" in headers
    # No body rendered: the text part appears nowhere but as a link.
    assert "Track it:" not in html
    # A finished message offers no actions and does not poll.
    assert "Retry now" not in html and "Cancel message" not in html
    assert 'data-poll="2000"' not in html
    assert browser_client.get("/messages/999").status_code == 404


def test_the_header_polls_while_the_message_can_change_and_stops_when_final(
    browser_client: FlaskClient, smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server)
    pk = send()["id"]
    page = browser_client.get(f"/messages/{pk}").get_data(as_text=True)
    assert f'hx-get="/messages/{pk}?seen=queued.0" hx-trigger="poll" data-poll="2000"' in page
    same = browser_client.get(f"/messages/{pk}?seen=queued.0", headers=HTMX)
    assert same.get_data(as_text=True).lstrip().startswith('<article id="message-header"')
    assert "HX-Trigger" not in same.headers and "HX-Request" in same.headers["Vary"]
    engine.run_pass()
    smtp_server.wait_for(1)
    final = browser_client.get(f"/messages/{pk}?seen=queued.0", headers=HTMX)
    header = final.get_data(as_text=True)
    assert "state-sent" in header and "data-poll" not in header and "<html" not in header
    # The status moved: the timeline is told to follow.
    assert json.loads(final.headers["HX-Trigger"]) == {"rb-message-changed": pk}
    timeline = browser_client.get(f"/messages/{pk}/timeline", headers=HTMX)
    assert "<strong>sent</strong>" in timeline.get_data(as_text=True)


@ON_BOTH_DATABASES
def test_retry_now_makes_a_deferred_message_due_and_the_engine_delivers_it(
    browser_client: FlaskClient, smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    smtp_server.fail("data", 451, "4.3.0 Try again later", times=1)
    add_relay("primary", smtp_server)
    queued = send(to=["alice@example.org", "bob@example.org"])
    engine.run_pass()
    row = message(queued["id"])
    assert row.status == "deferred" and row.next_attempt_at and row.next_attempt_at > utcnow()
    assert engine.run_pass().claimed == 0  # not due yet
    page = browser_client.get(f"/messages/{row.id}").get_data(as_text=True)
    assert "Retry now" in page and "Cancel message" in page
    response = browser_client.post(f"/messages/{row.id}/retry")
    assert response.status_code == 302 and response.headers["Location"] == f"/messages/{row.id}"
    row = message(queued["id"])
    assert row.status == "queued" and row.next_attempt_at is not None
    assert row.next_attempt_at <= utcnow()
    (retried,) = events(row.id, "retry")
    assert retried.detail == f"retried by {OPERATOR_EMAIL}"
    shown = browser_client.get(f"/messages/{row.id}").get_data(as_text=True)
    assert f"Message {row.id} retried." in shown and f"retried by {OPERATOR_EMAIL}" in shown
    report = engine.run_pass()
    assert report.sent == 1
    (got,) = smtp_server.wait_for(1)
    assert got.message_id == queued["message_id"]
    assert sorted(got.rcpt_tos) == ["alice@example.org", "bob@example.org"]
    assert message(row.id).status == "sent"


def test_retry_keeps_the_recipients_still_owed(
    browser_client: FlaskClient, smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server)
    pk = send(to=["alice@example.org", "bob@example.org"])["id"]
    set_status(pk, "held", pending_recipients=["bob@example.org"])
    browser_client.post(f"/messages/{pk}/retry")
    assert message(pk).pending_recipients == ["bob@example.org"]
    engine.run_pass()
    (got,) = smtp_server.wait_for(1)
    assert got.rcpt_tos == ["bob@example.org"]


def test_cancel_stops_a_queued_message_for_good(
    browser_client: FlaskClient, smtp_server: Any, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server)
    pk = send()["id"]
    response = browser_client.post(f"/messages/{pk}/cancel", follow_redirects=True)
    assert f"Message {pk} cancelled." in response.get_data(as_text=True)
    row = message(pk)
    assert row.status == "cancelled" and row.next_attempt_at is None
    (cancelled,) = events(pk, "cancelled")
    assert cancelled.detail == f"cancelled by {OPERATOR_EMAIL}"
    assert engine.run_pass().claimed == 0
    assert smtp_server.received == [] and smtp_server.connections == 0


@pytest.mark.parametrize(
    ("action", "status", "reason"),
    [
        ("cancel", "sent", "already sent"),
        ("cancel", "failed", "already failed"),
        ("retry", "queued", "already queued"),
        ("retry", "sent", "already sent"),
        ("retry", "sending", "being sent now"),
    ],
)
def test_refused_transitions_change_nothing(
    browser_client: FlaskClient, send: Any, action: str, status: str, reason: str
) -> None:
    pk = send()["id"]
    due = message(pk).next_attempt_at if status == "queued" else None
    set_status(pk, status, next_attempt_at=due)
    before = message(pk)
    state = (before.status, before.next_attempt_at, before.updated_at)
    response = browser_client.post(f"/messages/{pk}/{action}", follow_redirects=True)
    html = response.get_data(as_text=True)
    assert f'class="flash flash-error" role="alert">Message {pk} was not' in html
    assert reason in html
    after = message(pk)
    assert (after.status, after.next_attempt_at, after.updated_at) == state
    assert events(pk, "retry") == [] and events(pk, "cancelled") == []


@ON_BOTH_DATABASES
def test_bulk_retry_touches_exactly_the_matching_rows(
    browser_client: FlaskClient, send: Any, smtp_server: Any, add_relay: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", smtp_server)
    sent = send(tags=["batch"])["id"]
    engine.run_pass()
    smtp_server.wait_for(1)
    batch = [send(tags=["batch"])["id"] for _ in range(3)]
    other = send(tags=["other"])["id"]
    for pk in (*batch, other):
        defer(pk)
    set_status(batch[2], "failed", last_error="550 5.1.1 nope")
    html = browser_client.get("/messages/?tag=batch").get_data(as_text=True)
    assert "Retry all 4 matching" in html and 'hx-confirm="Retry all 4 matching' in html
    response = browser_client.post("/messages/bulk/retry?tag=batch", headers=HTMX)
    assert response.status_code == 200 and "HX-Request" in response.headers["Vary"]
    assert flash_of(response) == {
        "text": "Retried 3 messages; 1 skipped (already sent).",
        "category": "success",
    }
    assert 'id="results"' in response.get_data(as_text=True)
    assert [message(pk).status for pk in batch] == ["queued"] * 3
    assert all(message(pk).next_attempt_at <= utcnow() for pk in batch)  # type: ignore[operator]
    assert message(other).status == "deferred" and message(sent).status == "sent"
    assert [len(events(pk, "retry")) for pk in (*batch, other, sent)] == [1, 1, 1, 0, 0]
    engine.run_pass()
    smtp_server.wait_for(4)
    assert [message(pk).status for pk in batch] == ["sent"] * 3


@ON_BOTH_DATABASES
def test_bulk_cancel_touches_exactly_the_matching_rows(
    browser_client: FlaskClient, send: Any
) -> None:
    mine = [send(to=[f"user{i}@example.org"])["id"] for i in range(3)]
    theirs = send(to=["someone@example.net"])["id"]
    defer(mine[1])
    set_status(mine[2], "held")
    response = browser_client.post("/messages/bulk/cancel?recipient=example.org", headers=HTMX)
    assert flash_of(response)["text"] == "Cancelled 3 messages."
    assert [message(pk).status for pk in mine] == ["cancelled"] * 3
    assert all(message(pk).next_attempt_at is None for pk in mine)
    assert message(theirs).status == "queued" and message(theirs).next_attempt_at is not None
    again = browser_client.post("/messages/bulk/cancel?recipient=example.org", headers=HTMX)
    assert flash_of(again) == {
        "text": "Cancelled 0 messages; 3 skipped (already cancelled).",
        "category": "warning",
    }


@ON_BOTH_DATABASES
def test_bulk_release_sends_the_held_matching_mail_through_a_paced_drain(
    browser_client: FlaskClient, send: Any
) -> None:
    from app.models import Drain

    held = [send(tags=["batch"], priority=p)["id"] for p in ("low", "high")]
    other_held = send(tags=["other"])["id"]
    queued = send(tags=["batch"])["id"]
    for pk in (*held, other_held):
        set_status(pk, "held")
    html = browser_client.get("/messages/?tag=batch").get_data(as_text=True)
    assert "Release held (paced)" in html
    response = browser_client.post("/messages/bulk/release?tag=batch", headers=HTMX)
    flash = flash_of(response)
    assert flash["category"] == "success" and "releases 2 held messages" in flash["text"]
    (drain,) = db.session.scalars(select(Drain)).all()
    assert drain.backlog == 2 and drain.created_by.startswith("operator ")
    assert [message(pk).drain_id for pk in held] == [drain.id, drain.id]
    assert [message(pk).status for pk in held] == ["held", "held"], "released at the ramp's pace"
    assert message(other_held).drain_id is None and message(queued).status == "queued"
    again = browser_client.post("/messages/bulk/release?tag=batch", headers=HTMX)
    assert flash_of(again)["text"] == "No held message matches this filter: nothing was released."


def test_bulk_actions_without_htmx_redirect_back_to_the_filter(
    browser_client: FlaskClient, send: Any
) -> None:
    pk = send(tags=["x"])["id"]
    response = browser_client.post("/messages/bulk/cancel?tag=x")
    assert response.status_code == 302 and response.headers["Location"] == "/messages/?tag=x"
    assert message(pk).status == "cancelled"
    bad = browser_client.post("/messages/bulk/cancel?status=nope", follow_redirects=True)
    assert "Fix the filter first: nothing was changed." in bad.get_data(as_text=True)
    assert browser_client.post("/messages/bulk/delete").status_code == 404


def test_actions_need_a_csrf_token(app: Flask, operator: Any, send: Any) -> None:
    client = app.test_client()  # CSRF checks on
    with client.session_transaction() as session:
        session["_user_id"] = str(operator.id)
        session["_fresh"] = True
    pk = send()["id"]
    assert client.post(f"/messages/{pk}/cancel").status_code == 400
    assert client.post("/messages/bulk/cancel", headers=HTMX).status_code == 400
    assert message(pk).status == "queued"
    page = client.get(f"/messages/{pk}").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    assert (
        client.post(f"/messages/{pk}/cancel", data={"csrf_token": token.group(1)}).status_code
        == 302
    )
    assert message(pk).status == "cancelled"
    listing = client.get("/messages/").get_data(as_text=True)
    for html in (page, listing):
        assert not re.search(r"<script(?![^>]*\bsrc=)", html)
        assert " style=" not in html and "hx-on" not in html
