"""The `relayboard` console script end to end: real processes on a real database file.

Each test runs the installed script in a subprocess against its own copy of a database
that `relayboard db upgrade` migrated once. Where a test needs state the command under
test does not create, it sets it up through an app created in-process from the same
environment (same database, same secret key).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, current_app
from sqlalchemy import select

from app import create_app
from app.config import Settings
from app.db import db
from app.models import ApiKey, Message, Relay
from app.services import api_keys, relays
from tests.processes import (
    DB_NAME,
    environment,
    free_port,
    relayboard,
    start,
    wait_until_serving,
)

PASSWORD = "cli-relay-password-s3cret"

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A database file migrated by `relayboard db upgrade`, and that run's result."""
    instance = tmp_path_factory.mktemp("migrated")
    result = relayboard(environment(instance), "db", "upgrade")
    return instance, result


@pytest.fixture
def env(tmp_path: Path, migrated: tuple[Path, Any]) -> dict[str, str]:
    """The environment of a fresh copy of the migrated database."""
    source, result = migrated
    assert result.returncode == 0, result.stderr
    instance = tmp_path / "instance"
    instance.mkdir()
    for path in source.glob(f"{DB_NAME}*"):
        shutil.copy(path, instance / path.name)
    return environment(instance)


@pytest.fixture
def run(env: dict[str, str]) -> Run:
    """Run `relayboard ARGS...` in that environment."""

    def call(*args: str, stdin: str | None = None, **extra: str) -> Any:
        return relayboard(env, *args, stdin=stdin, **extra)

    return call


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[Flask]:
    """An app created in-process on the same database and settings as the script."""
    application = create_app({"SETTINGS": Settings.from_env(env), "TESTING": True})
    with application.app_context():
        yield application
        db.session.remove()
        db.engine.dispose()


def relay_rows() -> dict[str, Relay]:
    db.session.rollback()
    db.session.expire_all()
    return {r.name: r for r in db.session.scalars(select(Relay))}


def key_names() -> list[str]:
    db.session.rollback()
    return sorted(db.session.scalars(select(ApiKey.name)))


def authenticate(key: str) -> int | None:
    db.session.rollback()
    live = api_keys.authenticate(key)
    return live.id if live else None


def add(name: str, server: Any, **values: Any) -> Relay:
    values.setdefault("security", "none")
    box = current_app.config["RELAYBOARD"].secret_box
    return relays.create(box, name=name, host=server.host, port=server.port, **values)


# --------------------------------------------------------------------------- db


def test_db_upgrade_creates_the_schema(migrated: tuple[Path, Any]) -> None:
    instance, result = migrated
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(instance / DB_NAME) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        (versions,) = conn.execute("SELECT count(*) FROM alembic_version").fetchone()
    assert {"relays", "api_keys", "messages", "attempts", "events"} <= tables
    assert versions == 1


# --------------------------------------------------------------------------- servers


def test_servers_add_stores_relays_and_list_never_shows_a_password(
    run: Run, app: Flask, smtp_server: Any
) -> None:
    added = run(
        *("servers", "add", "--name", "primary", "--host", "127.0.0.1"),
        *("--port", str(smtp_server.port), "--security", "none"),
        *("--username", "relay-user", "--password", PASSWORD),
    )
    assert added.returncode == 0, added.stderr
    assert "added relay primary" in added.stdout
    box = app.config["RELAYBOARD"].secret_box
    relays.create(box, name="backup", host="localhost", port=2525, enabled=False)  # no password
    listed = run("servers", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert PASSWORD not in listed.stdout + listed.stderr + added.stdout + added.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert [r["name"] for r in json.loads(listed.stdout)] == ["primary", "backup"]
    expected = {
        "name": "primary",
        "host": "127.0.0.1",
        "port": smtp_server.port,
        "security": "none",
        "username": "relay-user",
        "has_password": True,
        "enabled": True,
        "circuit": "closed",
    }
    assert {k: rows["primary"][k] for k in expected} == expected
    assert rows["backup"]["has_password"] is False and rows["backup"]["enabled"] is False
    assert rows["backup"]["security"] == "starttls"  # the default
    assert rows["primary"]["priority"] < rows["backup"]["priority"]
    stored = relay_rows()["primary"]
    assert stored.password_encrypted is not None
    assert PASSWORD.encode() not in stored.password_encrypted
    assert relays.endpoint(stored, box).password == PASSWORD


def test_servers_add_reads_the_password_from_stdin(run: Run, app: Flask) -> None:
    added = run(
        *("servers", "add", "--name", "primary", "--host", "127.0.0.1", "--port", "25"),
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    box = app.config["RELAYBOARD"].secret_box
    assert relays.endpoint(relay_rows()["primary"], box).password == PASSWORD


def test_servers_test_probes_a_live_relay_step_by_step(
    run: Run, app: Flask, smtp_server: Any
) -> None:
    add("primary", smtp_server)
    result = run("servers", "test", "primary")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    steps = [line.split()[:2] for line in lines[:-1]]
    assert steps == [["ok", "connect"], ["ok", "ehlo"], ["ok", "noop"]]
    assert all(" ms " in line for line in lines[:-1])
    assert "250" in lines[-2]  # the NOOP reply
    assert lines[-1].startswith("primary: ok in ")
    assert smtp_server.connections == 1


def test_servers_test_fails_against_a_refusing_relay(
    run: Run, app: Flask, refusing_server: Any
) -> None:
    add("primary", refusing_server)
    result = run("servers", "test", "primary")
    assert result.returncode == 1
    assert result.stdout.split()[:2] == ["FAIL", "connect"]
    assert "Error: primary: connection refused" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "enabled_before", "after"),
    [("disable", True, False), ("enable", False, True), ("remove", True, None)],
)
def test_servers_enable_disable_and_remove_change_the_relay(
    run: Run,
    app: Flask,
    smtp_server: Any,
    command: str,
    enabled_before: bool,
    after: bool | None,
) -> None:
    add("primary", smtp_server, enabled=enabled_before)
    add("backup", smtp_server)
    result = run("servers", command, "primary")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{command}d primary"
    rows = relay_rows()
    if after is None:
        assert list(rows) == ["backup"]
    else:
        assert rows["primary"].enabled is after
    assert rows["backup"].enabled is True


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["servers", "add", "--name", "primary", "--host", "10.0.0.9", "--port", "587"],
            "a relay named 'primary' already exists",
        ),
        (
            ["servers", "add", "--name", "new", "--host", "127.0.0.1", "--port", "70000"],
            "70000 is not in the range 1<=x<=65535",
        ),
        (["servers", "remove", "ghost"], "no relay named 'ghost'"),
        (["api-keys", "revoke", "ghost"], "no API key named 'ghost'"),
    ],
    ids=[
        "duplicate-relay",
        "port-too-high",
        "remove-unknown",
        "revoke-unknown",
    ],
)
def test_a_refused_command_exits_non_zero_with_a_clear_message_and_changes_nothing(
    run: Run, app: Flask, smtp_server: Any, args: list[str], words: str
) -> None:
    add("primary", smtp_server)
    api_keys.create("app")
    before = ({n: (r.host, r.port, r.enabled) for n, r in relay_rows().items()}, key_names())
    result = run(*args)
    assert result.returncode != 0
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    after = ({n: (r.host, r.port, r.enabled) for n, r in relay_rows().items()}, key_names())
    assert after == before


# --------------------------------------------------------------------------- api keys


def test_api_keys_create_prints_a_working_key_alone_on_the_last_line(run: Run, app: Flask) -> None:
    result = run("api-keys", "create", "--name", "app")
    assert result.returncode == 0, result.stderr
    *before, key = result.stdout.splitlines()
    assert key.startswith("rb_") and key == key.strip() and " " not in key
    assert all(key not in line for line in before)
    row = db.session.scalar(select(ApiKey).where(ApiKey.name == "app"))
    assert row is not None and key not in (row.key_hash, row.prefix)
    assert authenticate(key) == row.id


def test_api_keys_get_a_scope_at_creation_and_an_operator_changes_it(run: Run, app: Flask) -> None:
    default = run("api-keys", "create", "--name", "shop")
    support = run("api-keys", "create", "--name", "support", "--scope", "read-all")
    assert default.returncode == support.returncode == 0, default.stderr + support.stderr
    assert "(send)" in default.stdout and "(read-all)" in support.stdout
    bad = run("api-keys", "create", "--name", "root", "--scope", "admin")
    assert bad.returncode == 2 and "'admin' is not one of 'send', 'read-all'" in bad.stderr
    changed = run("api-keys", "scope", "shop", "read-all")
    assert changed.returncode == 0 and changed.stdout.strip() == "shop is now read-all"
    listed = {line.split()[0]: line.split() for line in run("api-keys", "list").stdout.splitlines()}
    assert listed["shop"][2] == listed["support"][2] == "read-all"
    missing = run("api-keys", "scope", "nobody", "send")
    assert missing.returncode == 1 and "no API key named 'nobody'" in missing.stderr


def test_api_keys_list_shows_keys_without_the_secret(run: Run, app: Flask) -> None:
    _, live = api_keys.create("app")
    _, old = api_keys.create("old-app")
    api_keys.revoke("old-app")
    result = run("api-keys", "list")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(lines) == {"app", "old-app"}
    assert lines["app"].endswith("active") and live[:10] in lines["app"]
    assert "revoked" in lines["old-app"]
    assert live not in result.stdout and old not in result.stdout


def test_api_keys_revoke_stops_the_key_within_a_second(run: Run, app: Flask) -> None:
    _, key = api_keys.create("app")
    _, other = api_keys.create("other")
    assert authenticate(key) is not None  # this process now trusts it for LIVE_FOR
    result = run("api-keys", "revoke", "app")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "revoked app"
    time.sleep(api_keys.LIVE_FOR)
    assert authenticate(key) is None
    assert authenticate(other) is not None
    response = app.test_client().get("/api/messages", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401


# --------------------------------------------------------------------------- drain


def test_drain_delivers_what_the_api_queued(run: Run, app: Flask, smtp_server: Any) -> None:
    add("primary", smtp_server)
    _, key = api_keys.create("app")
    response = app.test_client().post(
        "/api/send",
        json={
            "from": "shop@example.com",
            "to": ["alice@example.org"],
            "subject": "From the CLI test",
            "text": "Hello",
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 202, response.get_json()
    queued = response.get_json()
    result = run("drain")
    assert result.returncode == 0, result.stderr
    assert "claimed 1: sent 1, deferred 0, failed 0" in result.stdout
    (got,) = smtp_server.wait_for(1)
    assert got.message_id == queued["message_id"] and got.rcpt_tos == ["alice@example.org"]
    db.session.rollback()
    message = db.session.get(Message, queued["id"])
    assert message is not None and message.status == "sent"


# --------------------------------------------------------------------------- settings


def test_a_bad_setting_exits_2_naming_the_variable(run: Run) -> None:
    result = run("drain", RELAYBOARD_DRAIN_INTERVAL="abc")
    assert result.returncode == 2
    assert "RELAYBOARD_DRAIN_INTERVAL='abc' is not a number" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_serve_runs_the_api_and_the_scheduler_in_gunicorn(
    env: dict[str, str], run: Run, smtp_server: Any, app: Flask
) -> None:
    import urllib.request

    add("sink", smtp_server)
    key = run("api-keys", "create", "--name", "served").stdout.strip().splitlines()[-1]
    port = free_port()
    served = start(
        env,
        *("serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"),
        RELAYBOARD_SCHEDULER="1",
        RELAYBOARD_DRAIN_INTERVAL="0.2",
    )
    try:
        wait_until_serving(port)
        body = json.dumps(
            {"from": "a@example.com", "to": ["b@example.org"], "subject": "served", "text": "hello"}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/send",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 202
            message_id = json.load(response)["message_id"]
        (got,) = smtp_server.wait_for(1, timeout=20)  # delivered by the worker's scheduler
        assert got.message_id == message_id
    finally:
        served.terminate()
        _, errors = served.communicate(timeout=30)
    assert served.returncode == 0, errors
    assert "Traceback" not in errors
