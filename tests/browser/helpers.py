"""Shared steps of the dashboard's browser tests: seed through services, sign in for real."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page, expect

from app.db import db
from app.domain.mime import Mailbox, MessageSpec, build_message
from app.models import Message, Relay
from app.services import operators, queue, relays
from app.services.delivery import DeliveryEngine
from tests.browser.conftest import LiveServer, in_thread

EMAIL, PASSWORD = "ops@example.com", "correct horse battery"


def sign_in(page: Page, live: LiveServer) -> None:
    """Create the operator through the service, then sign in through the real form."""
    with live.app.app_context():
        operators.create(EMAIL, PASSWORD)
    page.goto("/login")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("link", name="Overview")).to_have_attribute("aria-current", "page")


def add_relay(live: LiveServer, name: str, server: Any, **values: Any) -> int:
    """Add a relay pointing at a test server (host and port) and return its id."""
    values.setdefault("security", "none")
    with live.app.app_context():
        box = live.app.config["RELAYBOARD"].secret_box
        return relays.create(box, name=name, host=server.host, port=server.port, **values).id


def change_relay(live: LiveServer, relay_id: int, **values: Any) -> None:
    """Change a relay through the service."""
    with live.app.app_context():
        relay = db.session.get(Relay, relay_id)
        assert relay is not None
        relays.update(relay, **values)


def relay_names(live: LiveServer) -> list[str]:
    """Return the relays' names in priority order, as stored."""
    with live.app.app_context():
        return [relay.name for relay in relays.ordered()]


def enqueue(live: LiveServer, subject: str = "Your order") -> int:
    """Queue a message through the service and return its row id."""
    spec = MessageSpec(
        sender=Mailbox("shop@example.com", "Shop"),
        to=[Mailbox("alice@example.org")],
        cc=[],
        bcc=[],
        reply_to=None,
        subject=subject,
        text="Thanks for your order.",
        html=None,
        attachments=[],
        headers={},
        received=[],
    )
    with live.app.app_context():
        return queue.enqueue(build_message(spec, max_bytes=100_000)).id


def message_status(live: LiveServer, message_pk: int) -> str:
    """Return a message's stored status."""
    with live.app.app_context():
        row = db.session.get(Message, message_pk)
        assert row is not None
        return row.status


def run_pass(live: LiveServer) -> Any:
    """Run one delivery pass in a thread of its own (asyncio.run cannot run on this one)."""
    with live.app.app_context():
        engine = DeliveryEngine(db.engine, live.app.config["RELAYBOARD"])
    return in_thread(engine.run_pass)


def set_marker(page: Page) -> str:
    """Mark the window: the mark survives only while no navigation happens."""
    page.evaluate("window.__marker = 1")
    return page.url


def assert_same_window(page: Page, url: str) -> None:
    """Say the page was neither reloaded nor navigated since set_marker."""
    assert page.url == url
    assert page.evaluate("window.__marker") == 1
