"""Drains and the global pause in a real browser: the progress bar moves without a reload,
pause from the live part, and pausing and resuming all delivery from the overview."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from playwright.sync_api import Page, expect

from app.db import db
from app.models import Relay, utcnow
from app.services import drains, maintenance
from tests.browser.conftest import LiveServer
from tests.browser.helpers import (
    add_relay,
    assert_same_window,
    enqueue,
    run_pass,
    set_marker,
    sign_in,
)

# Every live panel polls every 2 s: a change shows within a few polls.
LIVE = 8_000


def _held_drain(live: LiveServer, server: Any, count: int) -> int:
    """Hold `count` messages for a relay in maintenance, end it a minute ago (so the ramp
    lets them all out at the next pace) and return the drain's id."""
    relay_id = add_relay(live, "primary", server, maintenance_policy="hold")
    with live.app.app_context():
        relay = db.session.get(Relay, relay_id)
        assert relay is not None
        maintenance.start(relay, "cli", now=utcnow() - timedelta(minutes=2))
    for index in range(count):
        enqueue(live, f"held {index}")
    run_pass(live)
    with live.app.app_context():
        relay = db.session.get(Relay, relay_id)
        assert relay is not None
        settings = live.app.config["RELAYBOARD"]
        now = utcnow() - timedelta(minutes=1)
        released = maintenance.end(relay, "cli", now=now, settings=settings)
        assert released is not None and released.drain_id is not None
        return released.drain_id


def _pace(live: LiveServer) -> int:
    with live.app.app_context():
        return drains.pace()


def test_the_progress_bar_moves_without_a_reload(
    page: Page, live: LiveServer, smtp_server: Any
) -> None:
    drain_id = _held_drain(live, smtp_server, 4)
    sign_in(page, live)
    page.get_by_role("banner").get_by_role("link", name="Drains", exact=True).click()
    card = page.locator(f"#drain-{drain_id}")
    bar = card.locator("progress")
    expect(bar).to_have_attribute("value", "0")
    expect(bar).to_have_attribute("max", "4")
    expect(card.locator(".badge")).to_have_text("running")

    url = set_marker(page)
    assert _pace(live) == 4
    expect(card.locator(".drain-released .stat")).to_have_text("4", timeout=LIVE)
    # Paused, the drain stays listed once all is sent (a pass finishes a running one).
    with live.app.app_context():
        drains.pause(drains.get(drain_id), "cli")
    assert run_pass(live).sent == 4
    expect(bar).to_have_attribute("value", "4", timeout=LIVE)
    expect(card.locator(".drain-percent")).to_have_text("100%")
    expect(card.locator(".drain-sent .stat")).to_have_text("4")
    assert_same_window(page, url)


def test_pause_a_drain_from_its_live_card(page: Page, live: LiveServer, smtp_server: Any) -> None:
    drain_id = _held_drain(live, smtp_server, 2)
    sign_in(page, live)
    page.goto("/drains/")
    url = set_marker(page)
    card = page.locator(f"#drain-{drain_id}")
    card.get_by_role("button", name=f"Pause drain {drain_id}").click()
    expect(page.get_by_role("status")).to_contain_text(f"Paused drain {drain_id}")
    expect(card.locator(".badge")).to_have_text("paused")
    expect(card.get_by_role("button", name=f"Resume drain {drain_id}")).to_be_focused()
    assert _pace(live) == 0, "paused: nothing released"
    assert_same_window(page, url)


def test_pause_and_resume_all_delivery_from_the_overview(page: Page, live: LiveServer) -> None:
    sign_in(page, live)
    pause_form = page.locator("details.pause-delivery")
    pause_form.locator("summary").click()
    page.get_by_role("button", name="Pause all delivery").click()
    expect(page.locator("#pause-note-error")).to_have_text(
        "Say why: the note is shown to everyone while delivery is paused."
    )
    page.get_by_label("Why pause all delivery?").fill("ESP incident")
    page.get_by_role("button", name="Pause all delivery").click()
    banner = page.locator("#overview-state")
    expect(banner).to_contain_text("Delivery paused by operator ops@example.com since")
    expect(banner).to_contain_text("UTC: ESP incident")
    expect(banner.locator(".badge")).to_have_text("maintenance")
    expect(pause_form).to_be_hidden()

    page.get_by_role("button", name="Resume delivery").click()
    expect(page.get_by_role("status")).to_have_text(
        "Delivery resumed: the mail that waited goes out now."
    )
    expect(banner.get_by_role("button", name="Resume delivery")).to_have_count(0)
    expect(pause_form).to_be_visible()
