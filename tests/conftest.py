"""The fixed cast: an app on a real database, an API key, and real SMTP servers on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from app import create_app
from app.config import Settings
from app.db import db
from app.models import Relay
from app.services import api_keys, relays
from app.services.delivery import DeliveryEngine
from tests.smtp_servers import *  # noqa: F403  (fixtures: smtp_server, smtp_server_factory, …)
from tests.smtp_servers import TestCertificate

PG_URL = os.environ.get("RELAYBOARD_TEST_PG_URL")
SECRET = "test-secret-key-0123456789abcdef"


def make_settings(instance: Path, database_url: str, **overrides: str) -> Settings:
    """Return test settings: short timeouts, fast retries, no scheduler."""
    env = {
        "RELAYBOARD_INSTANCE_PATH": str(instance),
        "RELAYBOARD_DATABASE_URL": database_url,
        "RELAYBOARD_SECRET_KEY": SECRET,
        "RELAYBOARD_SCHEDULER": "0",
        "RELAYBOARD_CONNECT_TIMEOUT": "1",
        "RELAYBOARD_COMMAND_TIMEOUT": "2",
        "RELAYBOARD_ATTEMPT_DEADLINE": "4",
        "RELAYBOARD_CONNECT_PATIENCE": "0.3",
        "RELAYBOARD_RETRY_BASE": "60",
        "RELAYBOARD_BATCH_SIZE": "50",
        "RELAYBOARD_LOG_LEVEL": "WARNING",
    }
    env.update(overrides)
    return Settings.from_env(env)


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: SQLite by default, PostgreSQL for tests parametrized with 'pg'."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'relayboard.db'}"
        return
    if not PG_URL:
        pytest.skip("RELAYBOARD_TEST_PG_URL is not set")
    name = f"rb_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, _ = PG_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    """Override in a test module to change settings for its app."""
    return {}


@pytest.fixture
def app(
    tmp_path: Path,
    database_url: str,
    settings_overrides: dict[str, str],
    test_certificate: TestCertificate,
) -> Iterator[Flask]:
    """An app on a fresh database, with the test CA trusted for relay TLS."""
    overrides = {"RELAYBOARD_CA_FILE": test_certificate.ca_file, **settings_overrides}
    settings = make_settings(tmp_path / "instance", database_url, **overrides)
    application = create_app({"SETTINGS": settings, "TESTING": True})
    with application.app_context():
        db.create_all()
        yield application
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def api_key(app: Flask) -> str:
    """A live API key."""
    _, key = api_keys.create("test-app")
    return key


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    """Headers that authenticate as the test app."""
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
def add_relay(app: Flask) -> Callable[..., Relay]:
    """Add a relay pointing at a test server (anything with host and port)."""

    def add(name: str, server: Any, **values: Any) -> Relay:
        values.setdefault("security", "none")
        box = app.config["RELAYBOARD"].secret_box
        return relays.create(box, name=name, host=server.host, port=server.port, **values)

    return add


@pytest.fixture
def engine(app: Flask) -> DeliveryEngine:
    """A delivery engine of this app."""
    return DeliveryEngine(db.engine, app.config["RELAYBOARD"])


@pytest.fixture
def send(client: FlaskClient, auth: dict[str, str]) -> Callable[..., dict[str, Any]]:
    """POST a message to /api/send and return the JSON answer (asserting 202)."""

    def post(**fields: Any) -> dict[str, Any]:
        body = {
            "from": "Shop <shop@example.com>",
            "to": ["alice@example.org"],
            "subject": "Your order",
            "text": "Thanks! https://shop.example.com/orders/1",
            **fields,
        }
        response = client.post("/api/send", json=body, headers=auth)
        assert response.status_code == 202, response.get_json()
        result: dict[str, Any] = response.get_json()
        return result

    return post


OPERATOR_EMAIL = "ops@example.com"
OPERATOR_PASSWORD = "correct horse battery"


@pytest.fixture
def operator(app: Flask) -> Any:
    """The operator of the fixed cast."""
    from app.services import operators

    return operators.create(OPERATOR_EMAIL, OPERATOR_PASSWORD)


@pytest.fixture
def browser_client(app: Flask, operator: Any) -> FlaskClient:
    """A test client signed in as the operator (CSRF checks off: see test_web for them on)."""
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    with client.session_transaction() as session:
        session["_user_id"] = str(operator.id)
        session["_fresh"] = True
    return client
