"""A relay's maintenance in a real browser, with delivery running behind it: start it from
the relay's page, watch the held count rise, end it, and watch the drain send the backlog
out at the ramp's pace, all without a reload."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import func, select

from app import create_app
from app.db import db
from app.models import Message
from app.services import drains
from app.services.delivery import DeliveryEngine
from tests.browser.conftest import LiveServer
from tests.browser.helpers import add_relay, assert_same_window, enqueue, set_marker, sign_in
from tests.conftest import SECRET, make_settings
from tests.smtp_servers import TestCertificate

# Every live panel polls every 2 s: a change shows within a few polls.
LIVE = 8_000
BACKLOG = 8


@pytest.fixture
def live(tmp_path: Path, test_certificate: TestCertificate) -> Iterator[LiveServer]:
    """The browser tests' live app, with a drain ramp at test scale: 1 message a second,
    doubled every 3 s, so 8 held messages take about 5 s to go out."""
    settings = make_settings(
        tmp_path / "instance",
        f"sqlite:///{tmp_path / 'live.db'}",
        RELAYBOARD_CA_FILE=test_certificate.ca_file,
        RELAYBOARD_SECRET_KEY=SECRET,
        RELAYBOARD_DRAIN_INITIAL_RATE="1",
        RELAYBOARD_DRAIN_GROWTH="2",
        RELAYBOARD_DRAIN_STEP="3",
    )
    app = create_app({"SETTINGS": settings})
    with app.app_context():
        db.create_all()
    with LiveServer(app) as server:
        yield server
    with app.app_context():
        db.engine.dispose()


class Worker:
    """What `relayboard worker` does, in a thread: pace the drains and run delivery passes
    (a pass keeps going while a running drain holds mail), every tenth of a second."""

    def __init__(self, live: LiveServer) -> None:
        self.app = live.app
        with self.app.app_context():
            self.engine = DeliveryEngine(db.engine, self.app.config["RELAYBOARD"])
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.app.app_context():
                    drains.pace()
                self.engine.run_pass(stop=self.stop)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the test
                self.errors.append(exc)
                return
            self.stop.wait(0.1)

    def __enter__(self) -> Worker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the worker did not stop"
        assert not self.errors, self.errors


def _statuses(live: LiveServer) -> dict[str, int]:
    with live.app.app_context():
        rows = db.session.execute(select(Message.status, func.count()).group_by(Message.status))
        return {status: int(n) for status, n in rows}


# Every value the drain's progress bar takes, recorded by the page as htmx swaps it in.
WATCH_BAR = """(selector) => {
  window.__bar = [];
  const look = () => {
    const bar = document.querySelector(selector);
    const value = bar ? bar.getAttribute("value") : null;
    if (value !== null && window.__bar[window.__bar.length - 1] !== value) {
      window.__bar.push(value);
    }
  };
  look();
  new MutationObserver(look).observe(
    document.body, {subtree: true, childList: true, attributes: true}
  );
}"""


def test_maintenance_holds_the_mail_and_its_end_drains_it_live(
    page: Page, live: LiveServer, smtp_server: Any
) -> None:
    relay_id = add_relay(live, "primary", smtp_server, maintenance_policy="hold")
    sign_in(page, live)
    with Worker(live):
        # Start the maintenance from the relay's page, with a note.
        page.goto(f"/relays/{relay_id}/")
        start = page.locator("#maintenance form").filter(
            has=page.get_by_role("button", name="Start maintenance")
        )
        start.get_by_label("Note").fill("provider upgrade")
        start.get_by_role("button", name="Start maintenance").click()
        expect(page.locator("#flashes")).to_contain_text(
            "primary is in maintenance: nothing is sent through it"
        )
        expect(page.get_by_role("heading", name="primary").locator(".badge")).to_contain_text(
            ["maintenance"]
        )
        panel = page.locator("#maintenance-panel")
        expect(panel).to_contain_text("In maintenance")
        expect(panel.locator(".maintenance-note")).to_contain_text("provider upgrade")

        # Mail queued now is held by the running passes: the count rises without a reload.
        url = set_marker(page)
        held = panel.locator(".maintenance-held")
        for _ in range(3):
            enqueue(live, "during the maintenance")
        expect(held).to_have_text("3 messages held for it.", timeout=LIVE)
        for _ in range(BACKLOG - 3):
            enqueue(live, "during the maintenance")
        expect(held).to_have_text(f"{BACKLOG} messages held for it.", timeout=LIVE)
        assert_same_window(page, url)
        assert smtp_server.received == []
        assert _statuses(live) == {"held": BACKLOG}

        # The overview's tile says so too.
        page.get_by_role("banner").get_by_role("link", name="Overview", exact=True).click()
        tile = page.locator("#overview-relays article").filter(
            has=page.get_by_role("heading", name="primary")
        )
        expect(tile.locator(".badge", has_text="maintenance")).to_be_visible()
        expect(tile.locator(".maintenance-held")).to_have_text(
            f"{BACKLOG} messages held for it · its mail waits"
        )

        # End it from the relay's page: a drain takes the backlog.
        page.goto(f"/relays/{relay_id}/")
        end = page.locator("#maintenance form").filter(
            has=page.get_by_role("button", name="End maintenance")
        )
        end.get_by_label("Note").fill("upgrade done")
        end.get_by_role("button", name="End maintenance").click()
        flash = page.locator("#flashes")
        expect(flash).to_contain_text(
            f"Maintenance of primary ended: {BACKLOG} held and 0 deferred messages go out "
            "through drain"
        )
        found = re.search(r"through drain (\d+)", flash.inner_text())
        assert found is not None
        drain_id = int(found.group(1))

        # The drain's bar moves on /drains/ without a reload until all is sent.
        page.get_by_role("banner").get_by_role("link", name="Drains", exact=True).click()
        card = page.locator(f"#drain-{drain_id}")
        expect(card.locator("progress")).to_have_attribute("max", str(BACKLOG))
        url = set_marker(page)
        page.evaluate(WATCH_BAR, f"#drain-{drain_id} progress")
        expect(card.locator(".drain-sent .stat")).to_have_text(
            re.compile(rf"^[1-{BACKLOG - 1}]$"), timeout=LIVE
        )
        expect(card.locator(".drain-rate .stat")).to_have_text(re.compile(r"msg/s$"))
        # Done: the drain leaves the running ones.
        expect(card).to_have_count(0, timeout=LIVE)
        expect(page.locator("#drains-running")).to_contain_text("No drain is running")
        assert_same_window(page, url)
        seen = [int(v) for v in page.evaluate("window.__bar")]
        assert seen == sorted(seen) and len(set(seen)) >= 2, f"the bar moved: {seen}"
        assert any(0 < v < BACKLOG for v in seen), seen

    assert len(smtp_server.wait_for(BACKLOG)) == BACKLOG
    assert _statuses(live) == {"sent": BACKLOG}
    with live.app.app_context():
        drain = drains.get(drain_id)
        assert (drain.state, drain.released) == ("done", BACKLOG)
    # The past drains (refreshed every 10 s) list it as cleared, after a reload.
    page.reload()
    row = page.locator(f"#past-drain-{drain_id}")
    expect(row.locator(".badge")).to_have_text("done")
    expect(row.get_by_role("cell", name=str(BACKLOG), exact=True)).to_have_count(2)  # backlog, sent
