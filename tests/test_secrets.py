"""Secret keys: retired keys still decrypt and verify sessions, `secrets rotate` re-encrypts,
and a secret no key can read stops only its own relay.

The relays log in to real aiosmtpd servers that require AUTH, so a password that was
decrypted wrongly would show as a refused login, not pass unnoticed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app import create_app
from app.config import Settings
from app.crypto import SecretBox
from app.db import db
from app.domain.mime import Mailbox, MessageSpec, build_message
from app.models import HealthCheck, Message, Relay
from app.services import health, operators, queue, relays
from app.services.delivery import DeliveryEngine
from tests.processes import environment, relayboard

OLD = "the-old-secret-key-0123456789abcdef"
NEW = "the-new-secret-key-0123456789abcdef"
USER, PASSWORD = "relay-user", "relay-pa55word"


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    """A database file migrated by `relayboard db upgrade`."""
    folder = tmp_path / "instance"
    folder.mkdir()
    result = relayboard(environment(folder), "db", "upgrade")
    assert result.returncode == 0, result.stderr
    return folder


def env_for(instance: Path, key: str, old: str = "") -> dict[str, str]:
    env = environment(instance)
    env.update(RELAYBOARD_SECRET_KEY=key, RELAYBOARD_OLD_SECRET_KEYS=old)
    return env


@contextmanager
def running(instance: Path, key: str, old: str = "") -> Iterator[Flask]:
    """An app on the instance's database with these secret keys."""
    app = create_app({"SETTINGS": Settings.from_env(env_for(instance, key, old)), "TESTING": True})
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()


def queue_one(pinned: int | None = None) -> int:
    spec = MessageSpec(
        Mailbox("shop@example.com"), [Mailbox("alice@example.org")], [], [], None,
        "Your order", "Thanks!", None, [], {}, [],
    )  # fmt: skip
    return queue.enqueue(build_message(spec, max_bytes=10_000), pinned_relay_id=pinned).id


def deliver(app: Flask) -> None:
    DeliveryEngine(db.engine, app.config["RELAYBOARD"]).run_pass()


def status(pk: int) -> Message:
    db.session.expire_all()
    message = db.session.get(Message, pk)
    assert message is not None
    return message


def add_locked_relay(app: Flask, server: Any, name: str = "locked", **values: Any) -> Relay:
    box = app.config["RELAYBOARD"].secret_box
    return relays.create(
        box, name=name, host=server.host, port=server.port, security="none",
        username=USER, password=PASSWORD, **values,
    )  # fmt: skip


def test_a_rotated_key_keeps_relays_delivering_and_rotate_reencrypts_them(
    instance: Path, smtp_server_factory: Any
) -> None:
    server = smtp_server_factory(auth=(USER, PASSWORD))
    with running(instance, OLD) as app:
        add_locked_relay(app, server)
    # The key changed; the old one is listed as retired: delivery goes on.
    with running(instance, NEW, old=OLD) as app:
        first = queue_one()
        deliver(app)
        assert status(first).status == "sent"
    server.wait_for(1)
    rotated = relayboard(env_for(instance, NEW, old=OLD), "secrets", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.strip() == (
        "re-encrypted 1 secret(s); 0 already under the current key; 0 unreadable"
    )
    assert PASSWORD not in rotated.stdout + rotated.stderr
    again = relayboard(env_for(instance, NEW), "secrets", "rotate")
    assert "re-encrypted 0 secret(s); 1 already under the current key" in again.stdout
    # The old key is gone from the settings: everything still works under the new one alone.
    with running(instance, NEW) as app:
        token = db.session.scalar(select(Relay.password_encrypted))
        assert token is not None and SecretBox([NEW]).decrypt(token) == PASSWORD
        second = queue_one()
        deliver(app)
        assert status(second).status == "sent"
    assert len(server.wait_for(2)) == 2


def test_a_session_signed_with_a_retired_key_still_signs_in(instance: Path) -> None:
    with running(instance, OLD) as app:
        operator = operators.create("ops@example.com", "correct horse battery")
        client = app.test_client()
        with client.session_transaction() as session:
            session["_user_id"], session["_fresh"] = str(operator.id), True
        cookie = client.get_cookie("session")
        assert cookie is not None and client.get("/settings/").status_code == 200
    for old, expected in ((OLD, 200), ("", 302)):
        with running(instance, NEW, old=old) as app:
            client = app.test_client()
            client.set_cookie("session", cookie.value)
            assert client.get("/settings/").status_code == expected


def test_a_secret_no_key_can_read_stops_only_its_relay(
    instance: Path, smtp_server_factory: Any
) -> None:
    locked_server, open_server = smtp_server_factory(auth=(USER, PASSWORD)), smtp_server_factory()
    with running(instance, OLD) as app:
        add_locked_relay(app, locked_server, priority=1)
        box = app.config["RELAYBOARD"].secret_box
        relays.create(box, name="open", host=open_server.host, port=open_server.port,
                      security="none", priority=2)  # fmt: skip
    with running(instance, NEW) as app:  # the old key is lost
        locked = relays.get("locked")
        free, pinned = queue_one(), queue_one(pinned=locked.id)
        deliver(app)
        # Mail fails over to the relay without a secret; only the locked relay's own mail waits.
        assert status(free).status == "sent" and status(free).relay_id == relays.get("open").id
        held = status(pinned)
        assert held.status == "deferred" and "its password cannot be decrypted" in (
            held.last_error or ""
        )
        assert locked_server.connections == 0
        # The health check says why without connecting.
        check = health.probe_relay(locked, app.config["RELAYBOARD"])
        assert not check.ok and "cannot be decrypted" in (check.error or "")
        assert locked_server.connections == 0
        assert (
            db.session.scalar(select(HealthCheck.ok).where(HealthCheck.relay_id == locked.id))
            is False
        )
        # The dashboard shows it on the tile, the relays table and the relay's page.
        operator = operators.create("ops@example.com", "correct horse battery")
        client = app.test_client()
        with client.session_transaction() as session:
            session["_user_id"], session["_fresh"] = str(operator.id), True
        for page in ("/", "/relays/", f"/relays/{locked.id}/"):
            html = client.get(page).get_data(as_text=True)
            assert "unusable" in html and "RELAYBOARD_OLD_SECRET_KEYS" in html, page
        assert client.get("/healthz").status_code == 200
    listed = relayboard(env_for(instance, NEW), "servers", "list")
    assert listed.returncode == 0, listed.stderr
    assert "unusable: its password cannot be decrypted" in listed.stdout
    rotate = relayboard(env_for(instance, NEW), "secrets", "rotate")
    assert rotate.returncode == 1 and "unusable" not in rotate.stdout
    assert "unreadable: relays.password_encrypted of 'locked'" in rotate.stderr
    tested = relayboard(env_for(instance, NEW), "servers", "test", "locked")
    assert tested.returncode == 1 and "cannot be decrypted" in tested.stderr
