"""The database goes away and comes back: honest 503s, no 202 without a row, calm workers.

PostgreSQL is made unreachable for real: its backends for the test database are
terminated and new connections refused (ALTER DATABASE … ALLOW_CONNECTIONS false).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, func, select, text

from app.db import db, reachability
from app.jobs import DrainJob
from app.models import Message

pytestmark = [
    pytest.mark.pg,
    pytest.mark.parametrize("database_url", [pytest.param("pg")], indirect=True),
]

MESSAGE = {"from": "shop@example.com", "to": ["a@example.org"], "subject": "hi", "text": "hi"}


@contextmanager
def unreachable(database_url: str) -> Iterator[None]:
    """Cut the test database off (existing sessions killed, new ones refused), then restore it."""
    name = database_url.rpartition("/")[2]
    admin = create_engine(os.environ["RELAYBOARD_TEST_PG_URL"], isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def unavailable(response: Any) -> dict[str, Any]:
    """Assert a 503 that says when to come back; return its JSON."""
    assert response.status_code == 503, response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) > 0
    body: dict[str, Any] = response.get_json()
    return body


def stored() -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(Message)) or 0


def test_the_api_answers_503_while_the_database_is_unreachable_and_recovers(
    client: FlaskClient, auth: dict[str, str], database_url: str, api_key: str
) -> None:
    assert client.post("/api/send", json=MESSAGE, headers=auth).status_code == 202
    db.session.remove()
    with unreachable(database_url):
        for _ in range(3):
            sent = unavailable(client.post("/api/send", json=MESSAGE, headers=auth))
            assert sent["error"]["code"] == "database_unavailable"
            assert "nothing was stored" in sent["error"]["message"]
        unavailable(client.get("/api/messages", headers=auth))
        health = unavailable(client.get("/healthz"))
        assert health["status"] == "error" and health["database"] == "unreachable"
        # A key this process has not seen lately must be looked up: that is a 503 too.
        stranger = {"Authorization": "Bearer rb_" + "x" * 43}
        unavailable(client.post("/api/send", json=MESSAGE, headers=stranger))
        db.session.remove()
    # Back: the next requests work without a restart, and no 202 went without its row.
    assert client.get("/healthz").status_code == 200
    assert client.post("/api/send", json=MESSAGE, headers=auth).status_code == 202
    assert stored() == 2


def test_workers_back_off_and_log_once_per_change_while_the_database_is_away(
    app: Flask, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    job = DrainJob(app)
    job()  # a pass on a healthy database
    caplog.set_level(logging.INFO, logger="relayboard")
    db.session.remove()
    with unreachable(database_url):
        for _ in range(5):
            job.retry_at = 0.0  # let each run try, as if the backoff had passed
            job()  # must not raise
        assert job.failures == 5 and job.retry_at > 0
        backoff = job.retry_at
        job()  # within the backoff: not even tried
        assert job.failures == 5 and job.retry_at == backoff
    job.retry_at = 0.0
    job()
    assert job.failures == 0 and reachability.down_since is None
    down = [r for r in caplog.records if r.getMessage() == "database unreachable"]
    up = [r for r in caplog.records if r.getMessage() == "database reachable again"]
    assert len(down) == 1 and len(up) == 1, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.exc_info], "a traceback per pass"
