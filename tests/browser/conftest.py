"""Real Chromium (Debian's, never a downloaded build) driving a live Relayboard."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from app import create_app
from app.db import db
from tests.conftest import SECRET, make_settings
from tests.smtp_servers import TestCertificate

CHROMIUM = os.environ.get("RELAYBOARD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"Chromium not found at {CHROMIUM}: apt-get install chromium (CI does)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One Chromium per module.

    Playwright's sync API keeps an event loop running on this thread while it lives, so
    it ends with the module (asyncio.run elsewhere would refuse to start), and browser
    tests drain in a thread of their own: see `in_thread`.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class LiveServer:
    """The app served by werkzeug in a thread on an ephemeral loopback port."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def live(tmp_path: Path, test_certificate: TestCertificate) -> Iterator[LiveServer]:
    """A live app on a fresh SQLite database (no scheduler: tests drain when they choose)."""
    settings = make_settings(
        tmp_path / "instance",
        f"sqlite:///{tmp_path / 'live.db'}",
        RELAYBOARD_CA_FILE=test_certificate.ca_file,
        RELAYBOARD_SECRET_KEY=SECRET,
    )
    app = create_app({"SETTINGS": settings})
    with app.app_context():
        db.create_all()
    with LiveServer(app) as server:
        yield server
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def page(chromium: Any, live: LiveServer) -> Iterator[Any]:
    """A fresh browser tab (its own cookies) on the live app."""
    context = chromium.new_context(base_url=live.url, viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.set_default_timeout(10_000)
    yield tab
    context.close()
    # A CSP violation or a script error is a defect, whatever the test checked.
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors


def in_thread(fn: Any, *args: Any) -> Any:
    """Run fn in a fresh thread (no Playwright event loop there) and return its result."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if errors:
        raise errors[0]
    return result[0] if result else None
