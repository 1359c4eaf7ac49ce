"""Write PNGs of the main pages into docs/screenshots/ (`make screenshots`).

A live Relayboard on a throwaway SQLite database, with real aiosmtpd relays on
loopback (one healthy, one refusing, one that answers 421), real drains so the
pages show real failovers and circuits, and Debian's Chromium taking the pictures.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from app import create_app  # noqa: E402
from app.domain.mime import Mailbox, MessageSpec, build_message  # noqa: E402
from app.db import db  # noqa: E402
from app.services import api_keys, maintenance, operators, queue, relays  # noqa: E402
from app.services.delivery import DeliveryEngine  # noqa: E402
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, LiveServer  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.smtp_servers import RefusingServer, ScriptedSMTPServer  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
EMAIL, PASSWORD = "ops@example.com", "screenshots only"


def seed(app: object, sink: ScriptedSMTPServer, flaky: ScriptedSMTPServer,
         refusing: RefusingServer) -> int:
    """Fill the database with relays, keys and delivered, deferred and failed-over mail."""
    with app.app_context():  # type: ignore[attr-defined]
        db.create_all()
        operators.create(EMAIL, PASSWORD)
        api_keys.create("shop")
        api_keys.create("billing")
        relays.create(app.config["RELAYBOARD"].secret_box, name="sendgrid", host=refusing.host, port=refusing.port, security="none",
                      provider="sendgrid", priority=10)
        relays.create(app.config["RELAYBOARD"].secret_box, name="mailgun", host=flaky.host, port=flaky.port, security="none",
                      provider="mailgun", priority=20, breaker_threshold=2)
        relays.create(app.config["RELAYBOARD"].secret_box, name="ses", host=sink.host, port=sink.port, security="none",
                      provider="ses", priority=30)
        first = 0
        for i in range(40):
            spec = MessageSpec(
                Mailbox("shop@example.com", "Example Shop"),
                [Mailbox(f"customer{i}@example.org")], [], [], None,
                f"Your order #{1000 + i} has shipped",
                f"Track it at https://shop.example.com/track/{1000 + i}",
                f'<p>Track it <a href="https://shop.example.com/track/{1000 + i}">here</a>.</p>',
                [], {}, [],
            )
            queued = queue.enqueue(build_message(spec, max_bytes=100_000),
                                   priority=0 if i % 5 == 0 else 1, tags=["orders"])
            first = first or queued.id
            if i % 10 == 9:
                DeliveryEngine(db.engine, app.config["RELAYBOARD"]).run_pass()  # type: ignore[attr-defined]
        # A MailerSend relay that was in maintenance: its held mail drains at a slow ramp.
        settings = replace(app.config["RELAYBOARD"], drain_initial_rate=0.05)  # type: ignore[attr-defined]
        mailersend = relays.create(settings.secret_box, name="mailersend", host=sink.host,
                                   port=sink.port, security="none", provider="mailersend",
                                   priority=5, maintenance_policy="hold")
        maintenance.start(mailersend, f"operator {EMAIL}", "MailerSend platform upgrade")
        for i in range(24):
            spec = MessageSpec(
                Mailbox("billing@example.com", "Example Billing"),
                [Mailbox(f"payer{i}@example.org")], [], [], None,
                f"Invoice #{5000 + i}", "Your invoice is attached.", None, [], {}, [],
            )
            queue.enqueue(build_message(spec, max_bytes=100_000),
                          priority=(0, 1, 2)[i % 3], tags=["invoices"])
        DeliveryEngine(db.engine, settings).run_pass()
        maintenance.end(mailersend, f"operator {EMAIL}", "upgrade done", settings=settings)
        return first


def main() -> None:
    """Take the screenshots."""
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, ScriptedSMTPServer() as sink, \
            ScriptedSMTPServer() as flaky:
        flaky.fail("mail", 421, "4.3.2 Service not available, maintenance")
        refusing = RefusingServer()
        settings = make_settings(Path(tmp), f"sqlite:///{tmp}/shots.db")
        app = create_app({"SETTINGS": settings})
        first = seed(app, sink, flaky, refusing)
        with LiveServer(app) as live, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(base_url=live.url, viewport={"width": 1280, "height": 900})
            page.goto("/login")
            page.get_by_label("Email").fill(EMAIL)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            for name, path in [
                ("overview", "/"),
                ("relays", "/relays/"),
                ("message", f"/messages/{first}"),
                ("messages", "/messages/"),
                ("events", "/events/"),  # failovers, circuits and health
                ("drains", "/drains/"),

                ("settings", "/settings/"),
            ]:
                page.goto(path)
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
                print(f"wrote docs/screenshots/{name}.png")
            browser.close()


if __name__ == "__main__":
    main()
