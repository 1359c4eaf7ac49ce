"""Drains and the global pause in the dashboard: the live drains page, pause, resume and
cancel, releasing held mail by hand, the overview's drains, the pause banner and the
overall state while delivery is paused."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.crypto import SecretBox
from app.db import db
from app.models import Drain, Event, Message, Relay, Switch, utcnow
from app.services import drains, maintenance, pause, stats
from app.services.delivery import DeliveryEngine
from tests.conftest import OPERATOR_EMAIL, SECRET

HX = {"HX-Request": "true"}
BY = f"operator {OPERATOR_EMAIL}"
BOX = SecretBox([SECRET])

AddRelay = Callable[..., Relay]


def html_of(client: FlaskClient, path: str, **headers: str) -> str:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_data(as_text=True)


def relay(name: str) -> Relay:
    db.session.expire_all()
    row = db.session.scalar(select(Relay).where(Relay.name == name))
    assert row is not None
    return row


def drain_of(drain_id: int) -> Drain:
    db.session.expire_all()
    return drains.get(drain_id)


def statuses() -> dict[str, int]:
    db.session.expire_all()
    rows = db.session.execute(select(Message.status, func.count()).group_by(Message.status))
    return {status: int(count) for status, count in rows}


def events(kind: str) -> list[Event]:
    return list(db.session.scalars(select(Event).where(Event.type == kind).order_by(Event.id)))


def flash_of(response: Any) -> dict[str, str]:
    """The flash an htmx answer carries in its HX-Trigger header."""
    flashed: dict[str, str] = json.loads(response.headers["HX-Trigger"])["flash"]
    return flashed


def bar(html: str, drain_id: int) -> tuple[int, int]:
    """The value and max of a drain's progress bar."""
    found = re.search(
        rf'<progress class="drain-bar[^"]*" value="(\d+)" max="(\d+)"\s+'
        rf'aria-label="Drain {drain_id}:',
        html,
    )
    assert found, f"no progress bar of drain {drain_id}"
    return int(found.group(1)), int(found.group(2))


@pytest.fixture
def hold(app: Flask, smtp_server: Any, add_relay: AddRelay, send: Any) -> Callable[[int], None]:
    """Hold `count` messages for `primary` (policy hold), in maintenance."""
    add_relay("primary", smtp_server, maintenance_policy="hold")
    maintenance.start(relay("primary"), "cli", now=utcnow() - timedelta(minutes=2))

    def held(count: int) -> None:
        for _ in range(count):
            send()
        DeliveryEngine(db.engine, app.config["RELAYBOARD"]).run_pass()

    return held


@pytest.fixture
def drain(app: Flask, hold: Callable[[int], None]) -> Drain:
    """A running drain of three messages held for `primary`: its maintenance ended a minute
    ago, so its ramp lets them all out at the next `drains.pace()`."""
    hold(3)
    assert statuses() == {"held": 3}
    released = maintenance.end(
        relay("primary"),
        "cli",
        now=utcnow() - timedelta(minutes=1),
        settings=app.config["RELAYBOARD"],
    )
    assert released is not None and released.drain_id is not None
    return drains.get(released.drain_id)


# -- the page and its live part -----------------------------------------------------------


def test_the_page_lists_the_running_drain_with_its_progress(
    browser_client: FlaskClient, drain: Drain, engine: DeliveryEngine, smtp_server: Any
) -> None:
    page = html_of(browser_client, "/drains/")
    assert re.search(r'<a href="/drains/"\s+aria-current="page">Drains</a>', page)
    card = page.split(f'id="drain-{drain.id}"')[1].split("</article>")[0]
    assert f"Drain {drain.id} · primary" in card
    assert '<span class="badge state-running">running</span>' in card
    assert bar(card, drain.id) == (0, 3) and ">0%</span>" in card
    assert "released of 3" in card and "msg/s" in card and "ETA" in card
    assert "cli" in card and "the end of primary&#39;s maintenance" in card
    assert f'action="/drains/{drain.id}/pause"' in card
    assert f'action="/drains/{drain.id}/cancel"' in card
    assert "3 messages it has not released stay held" in card  # the cancel's confirmation
    assert "No drain has ended yet." in page

    # The ramp lets all three out, a pass sends them: the bar moves without the page.
    # (Paused, the drain stays listed: a pass finishes a running drain that has sent all.)
    assert drains.pace() == 3
    live = html_of(browser_client, "/drains/running", **HX)
    assert bar(live, drain.id) == (0, 3)
    assert re.search(r'<div class="stat">3</div><small class="muted">released of 3', live)
    drains.pause(drain, "cli")
    assert engine.run_pass().sent == 3
    smtp_server.wait_for(3)
    live = html_of(browser_client, "/drains/running", **HX)
    assert bar(live, drain.id) == (3, 3) and ">100%</span>" in live
    assert re.search(r'<div class="stat">3</div><small class="muted">sent</small>', live)


def test_a_drain_with_its_ramp_off_shows_no_limit_rather_than_a_huge_rate(
    app: Flask, browser_client: FlaskClient, hold: Callable[[int], None]
) -> None:
    hold(2)
    settings = replace(app.config["RELAYBOARD"], drain_ramp=False)
    released = maintenance.end(relay("primary"), "cli", settings=settings)
    assert released is not None and released.drain_id is not None
    live = html_of(browser_client, "/drains/running", **HX)
    card = live.split(f'id="drain-{released.drain_id}"')[1].split("</article>")[0]
    assert '<div class="stat">no limit</div><small class="muted">current rate' in card
    assert "msg/s" not in card
    assert "no limit" in html_of(browser_client, "/partials/drains", **HX)


def test_the_live_part_is_served_alone_and_polls_itself(
    browser_client: FlaskClient, drain: Drain
) -> None:
    response = browser_client.get("/drains/running", headers=HX)
    assert response.status_code == 200 and "HX-Request" in response.headers["Vary"]
    html = response.get_data(as_text=True).strip()
    assert "<html" not in html and "<nav" not in html
    opening = re.match(r"<section ([^>]*)>", html)
    assert opening is not None, html[:200]
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', opening.group(1)))
    assert attributes["id"] == "drains-running" and attributes["hx-get"] == "/drains/running"
    assert attributes["hx-trigger"] == "poll" and attributes["hx-swap"] == "outerHTML"
    assert attributes["data-poll"] == "2000"
    assert bar(html, drain.id) == (0, 3)

    past = html_of(browser_client, "/drains/past", **HX).strip()
    assert past.startswith('<section id="drains-past"') and 'data-poll="10000"' in past


def test_a_finished_drain_moves_to_the_past_with_how_long_it_took(
    browser_client: FlaskClient, drain: Drain, engine: DeliveryEngine, smtp_server: Any
) -> None:
    assert drains.pace() == 3
    engine.run_pass()
    smtp_server.wait_for(3)
    drains.pace()  # a pass may have finished it already
    assert drain_of(drain.id).state == "done"
    live = html_of(browser_client, "/drains/running", **HX)
    assert f'id="drain-{drain.id}"' not in live and "No drain is running" in live
    past = html_of(browser_client, "/drains/past", **HX)
    row = past.split(f'id="past-drain-{drain.id}"')[1].split("</tr>")[0]
    assert '<span class="badge state-done">done</span>' in row
    assert re.search(r"cleared in \d+ (s|min)", row)
    assert re.search(r'data-label="Backlog" class="num">3<', row)
    assert re.search(r'data-label="Sent" class="num">3<', row)
    assert re.search(r'data-label="Failed" class="num">0<', row)


# -- pause, resume, cancel ----------------------------------------------------------------


def test_pause_resume_and_cancel_change_the_drain_and_say_so(
    browser_client: FlaskClient, drain: Drain
) -> None:
    response = browser_client.post(f"/drains/{drain.id}/pause")
    assert response.status_code == 302 and response.headers["Location"] == "/drains/"
    assert drain_of(drain.id).state == "paused"
    page = html_of(browser_client, "/drains/")
    assert f"Paused drain {drain.id}: nothing more is released" in page
    card = page.split(f'id="drain-{drain.id}"')[1].split("</article>")[0]
    assert '<span class="badge state-paused">paused</span>' in card
    assert f'action="/drains/{drain.id}/resume"' in card and "/pause" not in card

    # htmx: the fresh live part, and the flash in HX-Trigger.
    response = browser_client.post(f"/drains/{drain.id}/resume", headers=HX)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.lstrip().startswith('<section id="drains-running"') and "<nav" not in html
    assert '<span class="badge state-running">running</span>' in html
    assert flash_of(response) == {
        "text": f"Resumed drain {drain.id}: its ramp goes on from where it stood.",
        "category": "success",
    }
    assert drain_of(drain.id).state == "running"

    response = browser_client.post(f"/drains/{drain.id}/cancel", headers=HX)
    assert response.status_code == 200
    assert flash_of(response)["text"] == (
        f"Cancelled drain {drain.id}: 3 messages stay held; release them again below when ready."
    )
    assert drain_of(drain.id).state == "cancelled"
    assert statuses() == {"held": 3}
    assert "No drain is running" in response.get_data(as_text=True)
    kinds = [e.type for e in db.session.scalars(select(Event).order_by(Event.id))][-3:]
    assert kinds == ["drain_paused", "drain_resumed", "drain_cancelled"]
    assert all(BY in e.detail for e in events("drain_cancelled") + events("drain_paused"))
    past = html_of(browser_client, "/drains/past", **HX)
    assert "3 stayed held" in past and re.search(r"stopped after \d+ (s|min)", past)


@pytest.mark.parametrize(
    ("setup", "action", "message"),
    [
        ("paused", "pause", "Not paused: drain {id} is paused, not running."),
        ("running", "resume", "Not resumed: drain {id} is running, not paused."),
        ("cancelled", "cancel", "Not cancelled: drain {id} is cancelled already."),
        ("cancelled", "pause", "Not paused: drain {id} is cancelled, not running."),
    ],
)
def test_an_action_that_does_not_fit_the_drain_says_why_and_changes_nothing(
    browser_client: FlaskClient, drain: Drain, setup: str, action: str, message: str
) -> None:
    if setup == "paused":
        drains.pause(drain, "cli")
    elif setup == "cancelled":
        drains.cancel(drain, "cli")
    before = len(list(db.session.scalars(select(Event))))
    response = browser_client.post(f"/drains/{drain.id}/{action}", headers=HX)
    assert response.status_code == 200
    assert flash_of(response) == {"text": message.format(id=drain.id), "category": "error"}
    assert drain_of(drain.id).state == setup
    assert len(list(db.session.scalars(select(Event)))) == before
    page = browser_client.post(f"/drains/{drain.id}/{action}", follow_redirects=True)
    assert page.status_code == 200
    assert message.format(id=drain.id) in page.get_data(as_text=True)


@pytest.mark.parametrize("action", ["pause", "resume", "cancel"])
def test_an_unknown_drain_is_404(browser_client: FlaskClient, action: str) -> None:
    assert browser_client.post(f"/drains/999/{action}").status_code == 404
    assert browser_client.post(f"/drains/999/{action}", headers=HX).status_code == 404


# -- releasing held mail by hand ----------------------------------------------------------


def test_releasing_all_held_mail_starts_a_drain(
    app: Flask, browser_client: FlaskClient, drain: Drain
) -> None:
    drains.cancel(drain, "cli")  # its three messages stay held, owned by no drain
    page = html_of(browser_client, "/drains/")
    assert "3 held messages wait" in page and 'action="/drains/release#release"' in page
    assert '<option value="">All held mail (3)</option>' in page
    assert f'<option value="{relay("primary").id}">Held for primary (3)</option>' in page

    response = browser_client.post("/drains/release", data={"relay": ""})
    assert response.status_code == 302 and response.headers["Location"] == "/drains/"
    started = db.session.scalars(select(Drain).where(Drain.state == "running")).one()
    assert (started.backlog, started.relay_id, started.created_by) == (3, None, BY)
    assert started.reason == "held mail released by hand"
    settings = app.config["RELAYBOARD"]
    assert started.initial_rate == settings.drain_initial_rate
    page = html_of(browser_client, "/drains/")
    assert f"Releasing 3 held messages through drain {started.id}, highest priority first" in page
    assert f"Drain {started.id} · all held mail" in page

    again = browser_client.post("/drains/release", data={"relay": ""}, follow_redirects=True)
    assert "No held mail to release." in again.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(Drain)) == 2


def test_releasing_one_relays_mail_takes_its_max_rate_and_warns_while_it_is_in_maintenance(
    browser_client: FlaskClient,
    hold: Callable[[int], None],
    smtp_server: Any,
    add_relay: AddRelay,
) -> None:
    hold(2)
    primary = relay("primary")
    primary.max_rate = 3
    db.session.commit()
    backup = add_relay("backup", smtp_server)
    nothing = browser_client.post(
        "/drains/release", data={"relay": str(backup.id)}, follow_redirects=True
    )
    assert "No held mail for backup to release." in nothing.get_data(as_text=True)
    assert db.session.scalar(select(Drain.id)) is None

    response = browser_client.post(
        "/drains/release", data={"relay": str(primary.id)}, follow_redirects=True
    )
    html = response.get_data(as_text=True)
    started = db.session.scalars(select(Drain)).one()
    assert (started.backlog, started.relay_id, started.max_rate) == (2, primary.id, 3)
    assert f"Releasing 2 held messages for primary through drain {started.id}" in html
    assert "primary is still in maintenance (since" in html and "may be held again" in html
    assert "flash-warning" in html


def test_an_unknown_relay_choice_is_refused_and_nothing_is_stored(
    browser_client: FlaskClient, hold: Callable[[int], None]
) -> None:
    hold(1)
    response = browser_client.post("/drains/release", data={"relay": "999"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert re.search(r'<small id="relay-error" class="field-error">Not a valid choice', html)
    assert db.session.scalar(select(Drain.id)) is None
    assert statuses() == {"held": 1}


# -- the overview: running drains, the pause, the overall state ---------------------------


def test_the_overview_shows_each_running_drain_with_a_bar_linking_to_the_drains_page(
    browser_client: FlaskClient, drain: Drain
) -> None:
    tiles = html_of(browser_client, "/partials/drains", **HX).strip()
    opening = re.match(r"<section ([^>]*)>", tiles)
    assert opening is not None
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', opening.group(1)))
    assert attributes["id"] == "overview-drains" and attributes["hx-get"] == "/partials/drains"
    assert attributes["hx-trigger"] == "poll" and attributes["data-poll"] == "2000"
    assert f'href="/drains/#drain-{drain.id}"' in tiles and bar(tiles, drain.id) == (0, 3)
    assert f"Drain {drain.id} · primary" in tiles and "0 sent of 3" in tiles
    overview = html_of(browser_client, "/")
    assert 'id="overview-drains"' in overview and f'href="/drains/#drain-{drain.id}"' in overview

    drains.cancel(drain, "cli")
    quiet = html_of(browser_client, "/partials/drains", **HX)
    assert 'id="overview-drains"' in quiet and 'data-poll="2000"' in quiet
    assert "<progress" not in quiet and "<h2" not in quiet


def test_pausing_all_delivery_shows_a_banner_with_resume_and_the_state_maintenance(
    browser_client: FlaskClient, smtp_server: Any, add_relay: AddRelay
) -> None:
    add_relay("primary", smtp_server)
    page = html_of(browser_client, "/")
    assert "Pause all delivery" in page and 'action="/delivery/pause"' in page
    assert 'name="pause-note"' in page and "Resume delivery" not in page
    assert stats.overall_state(BOX)[0] == "operational"

    response = browser_client.post("/delivery/pause", data={"pause-note": "ESP incident #42"})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    switch = pause.current()
    assert switch is not None and (switch.by, switch.note) == (BY, "ESP incident #42")
    page = html_of(browser_client, "/")
    assert "Delivery paused: no mail goes out until it is resumed." in page  # the flash
    line = f"Delivery paused by {BY} since {switch.since:%H:%M} UTC: ESP incident #42"
    assert line in page
    assert 'class="state-banner banner-maintenance delivery-paused"' in page
    assert '<span class="badge state-maintenance">maintenance</span>' in page
    assert 'action="/delivery/resume"' in page and "Resume delivery" in page

    state, reasons = stats.overall_state(BOX)
    assert state == "maintenance" and reasons == [line[:1].lower() + line[1:]]
    banner = html_of(browser_client, "/partials/state", **HX)
    assert line in banner and "Resume delivery" in banner

    again = browser_client.post(
        "/delivery/pause", data={"pause-note": "twice"}, follow_redirects=True
    )
    assert "Nothing changed: delivery paused by" in again.get_data(as_text=True)
    still = pause.current()
    assert still is not None and still.note == "ESP incident #42"

    response = browser_client.post("/delivery/resume")
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert pause.current() is None
    page = html_of(browser_client, "/")
    assert "Delivery resumed: the mail that waited goes out now." in page
    assert "Resume delivery" not in page and "banner-operational" in page
    assert [e.type for e in events("delivery_paused") + events("delivery_resumed")] == [
        "delivery_paused",
        "delivery_resumed",
    ]
    gone = browser_client.post("/delivery/resume", follow_redirects=True)
    assert "Delivery was not paused." in gone.get_data(as_text=True)


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (None, "Say why: the note is shown to everyone while delivery is paused."),
        ("   ", "Say why: the note is shown to everyone while delivery is paused."),
        ("x" * 501, "Keep the note under 500 characters."),
    ],
)
def test_a_pause_without_a_fitting_note_is_refused_and_nothing_is_stored(
    browser_client: FlaskClient, note: str | None, message: str
) -> None:
    data = {} if note is None else {"pause-note": note}
    response = browser_client.post("/delivery/pause", data=data)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    error = re.search(r'<small id="pause-note-error" class="field-error">([^<]*)</small>', html)
    assert error and error.group(1) == message
    assert '<details class="pause-delivery" open>' in html
    assert pause.current() is None and db.session.scalar(select(Switch.name)) is None
    assert events("delivery_paused") == []


def test_while_paused_the_state_is_maintenance_and_still_says_what_else_is_wrong(
    app: Flask,
) -> None:
    pause.pause("cli", "migrating the database")
    state, reasons = stats.overall_state(BOX)
    assert state == "maintenance"
    assert reasons[0].startswith("delivery paused by cli since ")
    assert reasons[0].endswith(" UTC: migrating the database")
    assert reasons[1:] == ["no relay is configured: nothing can be delivered (new mail will wait)"]
    found = stats.current_state(BOX)
    assert found.paused is not None and found.paused.by == "cli"
    assert stats.assess([], {}, None, False, paused="delivery paused")[0] == "maintenance"


# -- security -------------------------------------------------------------------------------


def test_drain_and_pause_changes_need_a_csrf_token(app: Flask, operator: Any, drain: Drain) -> None:
    client = app.test_client()  # CSRF checks on, unlike browser_client
    with client.session_transaction() as session:
        session["_user_id"] = str(operator.id)
        session["_fresh"] = True
    for path in [
        f"/drains/{drain.id}/pause",
        f"/drains/{drain.id}/resume",
        f"/drains/{drain.id}/cancel",
        "/drains/release",
        "/delivery/pause",
        "/delivery/resume",
    ]:
        for headers in ({}, HX):
            response = client.post(path, data={"pause-note": "x", "relay": ""}, headers=headers)
            assert response.status_code == 400, path
    assert drain_of(drain.id).state == "running" and pause.current() is None
    assert db.session.scalar(select(func.count()).select_from(Drain)) == 1

    page = html_of(client, "/drains/")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    ok = client.post(f"/drains/{drain.id}/pause", data={"csrf_token": token.group(1)})
    assert ok.status_code == 302 and drain_of(drain.id).state == "paused"
    overview = html_of(client, "/")
    form_token = re.search(r'name="pause-csrf_token" type="hidden" value="([^"]+)"', overview)
    assert form_token
    paused = client.post(
        "/delivery/pause",
        data={"pause-csrf_token": form_token.group(1), "pause-note": "with a token"},
    )
    assert paused.status_code == 302 and pause.current() is not None


def test_the_pages_carry_no_inline_script_or_style(
    browser_client: FlaskClient, drain: Drain
) -> None:
    pause.pause(BY, "checking the pages")
    for path in ["/drains/", "/drains/running", "/drains/past", "/", "/partials/drains"]:
        html = html_of(browser_client, path)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert " style=" not in html and "hx-on" not in html, path
