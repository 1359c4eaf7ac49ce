"""`relayboard maintenance …`, `servers add --webhook-secret` and `servers edit`, in-process.

The commands run through Flask's CLI runner inside the test's app context, so they share
its database session; each check reads the rows afresh.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from sqlalchemy import select

from app.cli import cli
from app.db import db
from app.models import MaintenanceWindow, Relay, utcnow
from app.services import maintenance, relays
from app.services.delivery import DeliveryEngine

# Nothing listens there: no test here connects to a relay.
NOWHERE = SimpleNamespace(host="127.0.0.1", port=2525)
SECRET = "whsec-0123456789-abcdef"
PASSWORD = "relay-password-s3cret"

Invoke = Callable[..., Result]


@pytest.fixture
def invoke(app: Flask) -> Invoke:
    """Run `relayboard ARGS...` in-process; return click's result."""
    runner = app.test_cli_runner()

    def call(*args: str, stdin: str | None = None) -> Result:
        return runner.invoke(cli, list(args), input=stdin)

    return call


def relay(name: str) -> Relay:
    db.session.expire_all()
    row = db.session.scalar(select(Relay).where(Relay.name == name))
    assert row is not None
    return row


def columns(name: str) -> dict[str, Any]:
    row = relay(name)
    return {c.key: getattr(row, c.key) for c in Relay.__table__.columns}


def window_rows() -> list[MaintenanceWindow]:
    db.session.expire_all()
    return list(db.session.scalars(select(MaintenanceWindow).order_by(MaintenanceWindow.id)))


def everything(result: Result) -> str:
    return result.stdout + result.stderr


def box(app: Flask) -> Any:
    return app.config["RELAYBOARD"].secret_box


# --------------------------------------------------------------------------- start, end


def test_start_and_end_say_what_they_did_and_repeat_harmlessly(
    invoke: Invoke, add_relay: Any
) -> None:
    add_relay("primary", NOWHERE)

    started = invoke("maintenance", "start", "primary", "--note", "ESP upgrade")
    assert started.exit_code == 0, everything(started)
    assert started.stdout == "primary: maintenance started\n"
    row = relay("primary")
    assert (row.maintenance_by, row.maintenance_reason) == ("cli", "ESP upgrade")
    assert row.maintenance_since is not None

    again = invoke("maintenance", "start", "primary")
    assert again.exit_code == 0, everything(again)
    since = f"{row.maintenance_since:%Y-%m-%d %H:%M}"
    assert again.stdout == (
        f"primary: already in maintenance (since {since} UTC, by cli: ESP upgrade)\n"
    )
    assert relay("primary").maintenance_since == row.maintenance_since

    ended = invoke("maintenance", "end", "primary", "--note", "done")
    assert ended.exit_code == 0, everything(ended)
    assert ended.stdout == (
        "primary: maintenance ended; 0 held and 0 deferred message(s) released\n"
    )
    assert relay("primary").maintenance_since is None

    not_in = invoke("maintenance", "end", "primary")
    assert not_in.exit_code == 0, everything(not_in)
    assert not_in.stdout == "primary: not in maintenance\n"


def test_end_releases_the_held_mail_that_list_counts(
    invoke: Invoke, add_relay: Any, send: Any, engine: DeliveryEngine
) -> None:
    add_relay("primary", NOWHERE, maintenance_policy="hold")
    assert invoke("maintenance", "start", "primary").exit_code == 0
    send()
    send()
    engine.run_pass()  # holds both: the only relay is in maintenance and holds

    listed = invoke("maintenance", "list", "--json")
    assert listed.exit_code == 0, everything(listed)
    (row,) = json.loads(listed.stdout)["in_maintenance"]
    assert (row["name"], row["policy"], row["held"]) == ("primary", "hold", 2)

    ended = invoke("maintenance", "end", "primary")
    assert ended.stdout == (
        "primary: maintenance ended; 2 held and 0 deferred message(s) released through drain 1 "
        "(see `relayboard drains list`)\n"
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["maintenance", "start", "ghost"], "no relay named 'ghost'"),
        (["maintenance", "end", "ghost"], "no relay named 'ghost'"),
        (["maintenance", "start", "primary", "--note", "x" * 501], "keep the note under 500"),
    ],
    ids=["start-unknown", "end-unknown", "note-too-long"],
)
def test_start_and_end_refuse_with_a_clear_message(
    invoke: Invoke, add_relay: Any, args: list[str], words: str
) -> None:
    add_relay("primary", NOWHERE)
    result = invoke(*args)
    assert result.exit_code == 1
    assert words in result.stderr
    assert "Traceback" not in everything(result)
    assert relay("primary").maintenance_since is None


# --------------------------------------------------------------------------- plan, cancel


@pytest.mark.parametrize(
    ("start", "end", "starts_at", "ends_at"),
    [
        (
            "2099-06-01T22:00",
            "2099-06-02T01:30",
            datetime(2099, 6, 1, 22),
            datetime(2099, 6, 2, 1, 30),
        ),
        (
            "2099-06-01T22:00Z",
            "2099-06-02T01:30:15Z",
            datetime(2099, 6, 1, 22),
            datetime(2099, 6, 2, 1, 30, 15),
        ),
        (
            "2099-06-01T22:00+02:00",
            "2099-06-02T01:30+02:00",
            datetime(2099, 6, 1, 20),
            datetime(2099, 6, 1, 23, 30),
        ),
    ],
    ids=["naive-is-utc", "zulu", "offset-converted"],
)
def test_plan_reads_iso_times_as_utc(
    invoke: Invoke,
    add_relay: Any,
    start: str,
    end: str,
    starts_at: datetime,
    ends_at: datetime,
) -> None:
    add_relay("primary", NOWHERE)
    result = invoke(
        "maintenance", "plan", "primary", "--start", start, "--end", end, "--note", "ESP work"
    )
    assert result.exit_code == 0, everything(result)
    (window,) = window_rows()
    assert (window.starts_at, window.ends_at) == (starts_at, ends_at)
    assert window.starts_at.tzinfo is None
    assert (window.state, window.note, window.created_by) == ("planned", "ESP work", "cli")
    assert result.stdout == (
        f"primary: window {window.id} planned from {starts_at:%Y-%m-%d %H:%M:%S} "
        f"to {ends_at:%Y-%m-%d %H:%M:%S} UTC\n"
    )
    assert relay("primary").maintenance_since is None, "a plan starts by itself, later"


@pytest.mark.parametrize(
    ("start", "end", "words"),
    [
        ("tomorrow", "2099-06-02T01:00", "--start: 'tomorrow' is not an ISO 8601 time"),
        ("2099-06-01T22:00", "2099-13-01T00:00", "--end: '2099-13-01T00:00' is not an ISO 8601"),
        ("2099-06-02T01:00", "2099-06-01T22:00", "the window must end after it starts"),
        ("2099-06-01T22:00+02:00", "2099-06-01T20:00Z", "the window must end after it starts"),
        ("2000-01-01T00:00", "2000-01-01T01:00", "the window has already ended"),
    ],
    ids=["bad-start", "bad-end", "end-before-start", "equal-once-in-utc", "in-the-past"],
)
def test_plan_refuses_bad_times_with_a_clear_message(
    invoke: Invoke, add_relay: Any, start: str, end: str, words: str
) -> None:
    add_relay("primary", NOWHERE)
    result = invoke("maintenance", "plan", "primary", "--start", start, "--end", end)
    assert result.exit_code == 1
    assert words in result.stderr
    if "ISO" in words:
        assert "for example 2025-06-01T22:00Z" in result.stderr
    assert "Traceback" not in everything(result)
    assert window_rows() == []


def test_cancel_cancels_a_planned_window_once(invoke: Invoke, add_relay: Any) -> None:
    add_relay("primary", NOWHERE)
    planned = invoke(
        "maintenance", "plan", "primary", "--start", "2099-01-01T00:00", "--end", "2099-01-02"
    )
    assert planned.exit_code == 0, everything(planned)
    (window,) = window_rows()

    cancelled = invoke("maintenance", "cancel", str(window.id))
    assert cancelled.exit_code == 0, everything(cancelled)
    assert cancelled.stdout == f"primary: window {window.id} cancelled\n"
    assert window_rows()[0].state == "cancelled"

    again = invoke("maintenance", "cancel", str(window.id))
    assert again.exit_code == 1
    assert f"window {window.id} is cancelled, not planned" in again.stderr

    unknown = invoke("maintenance", "cancel", "999")
    assert unknown.exit_code == 1
    assert "no maintenance window 999" in unknown.stderr


def test_cancel_of_a_window_under_way_ends_the_maintenance(invoke: Invoke, add_relay: Any) -> None:
    add_relay("primary", NOWHERE)
    now = utcnow()
    window = maintenance.plan(
        relay("primary"), now - timedelta(minutes=1), now + timedelta(hours=1), "test"
    )
    maintenance.tick(now)
    assert relay("primary").maintenance_since is not None

    result = invoke("maintenance", "cancel", str(window.id))
    assert result.exit_code == 0, everything(result)
    assert (
        result.stdout
        == f"primary: window {window.id} was under way: ended, and its maintenance with it\n"
    )
    assert relay("primary").maintenance_since is None
    assert window_rows()[0].state == "done"


# --------------------------------------------------------------------------- list


def test_list_says_when_there_is_nothing(invoke: Invoke, add_relay: Any) -> None:
    add_relay("primary", NOWHERE)
    result = invoke("maintenance", "list")
    assert result.exit_code == 0, everything(result)
    assert result.stdout == (
        "no relay is in maintenance\n\n"
        "no maintenance windows: plan one with `relayboard maintenance plan`\n"
    )
    empty = invoke("maintenance", "list", "--json")
    assert json.loads(empty.stdout) == {"in_maintenance": [], "windows": []}


def test_list_shows_relays_in_maintenance_and_windows(invoke: Invoke, add_relay: Any) -> None:
    add_relay("primary", NOWHERE, priority=1, maintenance_policy="hold")
    add_relay("backup", NOWHERE, priority=2)
    add_relay("idle", NOWHERE, priority=3)
    invoke("maintenance", "start", "primary", "--note", "ESP upgrade")
    invoke("maintenance", "start", "backup")
    invoke(
        "maintenance",
        "plan",
        "idle",
        "--start",
        "2099-06-01T22:00Z",
        "--end",
        "2099-06-01T23:00Z",
        "--note",
        "move",
    )
    invoke(
        "maintenance",
        "plan",
        "primary",
        "--start",
        "2099-05-01T22:00Z",
        "--end",
        "2099-05-01T23:00Z",
    )
    (first, second) = sorted(window_rows(), key=lambda w: w.starts_at)

    text = invoke("maintenance", "list")
    assert text.exit_code == 0, everything(text)
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SINCE", "(UTC)", "BY", "POLICY", "HELD", "REASON"]
    assert lines[1].split()[0] == "primary" and lines[1].split()[3:] == [
        "cli",
        "hold",
        "0",
        "ESP",
        "upgrade",
    ]
    assert lines[2].split()[0] == "backup" and lines[2].split()[3:] == ["cli", "reroute", "0"]
    assert lines[3] == ""
    assert lines[4].split() == ["ID", "RELAY", "STARTS", "(UTC)", "ENDS", "(UTC)", "STATE", "NOTE"]
    assert lines[5].split() == [
        str(first.id),
        "primary",
        "2099-05-01",
        "22:00",
        "2099-05-01",
        "23:00",
        "planned",
    ]
    assert lines[6].split() == [
        str(second.id),
        "idle",
        "2099-06-01",
        "22:00",
        "2099-06-01",
        "23:00",
        "planned",
        "move",
    ]
    assert len(lines) == 7

    listed = invoke("maintenance", "list", "--json")
    assert listed.exit_code == 0, everything(listed)
    data = json.loads(listed.stdout)
    assert set(data) == {"in_maintenance", "windows"}
    since = relay("primary").maintenance_since
    assert since is not None
    assert data["in_maintenance"][0] == {
        "name": "primary",
        "since": since.isoformat() + "Z",
        "by": "cli",
        "reason": "ESP upgrade",
        "policy": "hold",
        "held": 0,
    }
    assert [r["name"] for r in data["in_maintenance"]] == ["primary", "backup"]
    assert data["windows"] == [
        {
            "id": first.id,
            "relay": "primary",
            "starts_at": "2099-05-01T22:00:00Z",
            "ends_at": "2099-05-01T23:00:00Z",
            "state": "planned",
            "note": "",
            "by": "cli",
        },
        {
            "id": second.id,
            "relay": "idle",
            "starts_at": "2099-06-01T22:00:00Z",
            "ends_at": "2099-06-01T23:00:00Z",
            "state": "planned",
            "note": "move",
            "by": "cli",
        },
    ]


def test_list_leaves_out_cancelled_windows(invoke: Invoke, add_relay: Any) -> None:
    add_relay("primary", NOWHERE)
    invoke("maintenance", "plan", "primary", "--start", "2099-01-01", "--end", "2099-01-02")
    (window,) = window_rows()
    invoke("maintenance", "cancel", str(window.id))
    assert json.loads(invoke("maintenance", "list", "--json").stdout)["windows"] == []


# --------------------------------------------------------------------------- servers add


def test_servers_add_seals_the_webhook_secret_and_never_prints_it(
    invoke: Invoke, app: Flask
) -> None:
    result = invoke(
        *("servers", "add", "--name", "primary", "--host", "127.0.0.1", "--port", "2525"),
        *("--webhook-secret", SECRET, "--maintenance-policy", "hold"),
    )
    assert result.exit_code == 0, everything(result)
    assert "added relay primary" in result.stdout
    assert SECRET not in everything(result)
    row = relay("primary")
    assert row.webhook_secret_encrypted is not None
    assert SECRET.encode() not in row.webhook_secret_encrypted
    assert box(app).decrypt(row.webhook_secret_encrypted) == SECRET
    assert row.maintenance_policy == "hold"
    listed = invoke("servers", "list", "--json")
    assert SECRET not in everything(listed)


def test_servers_add_reads_the_webhook_secret_from_stdin(invoke: Invoke, app: Flask) -> None:
    result = invoke(
        *("servers", "add", "--name", "primary", "--host", "127.0.0.1", "--port", "2525"),
        "--webhook-secret-stdin",
        stdin=SECRET + "\n",
    )
    assert result.exit_code == 0, everything(result)
    assert SECRET not in everything(result)
    row = relay("primary")
    assert row.webhook_secret_encrypted is not None
    assert box(app).decrypt(row.webhook_secret_encrypted) == SECRET
    assert row.maintenance_policy == "reroute", "the default"


@pytest.mark.parametrize(
    ("extra", "stdin", "words"),
    [
        (["--webhook-secret", "short"], None, "webhook secret must be 8 to 256 characters"),
        (["--webhook-secret", "has a space"], None, "webhook secret must be 8 to 256"),
        (["--webhook-secret", ""], None, "--webhook-secret is empty"),
        (["--webhook-secret-stdin"], "\n", "no webhook secret on standard input"),
        (
            ["--webhook-secret", SECRET, "--webhook-secret-stdin"],
            SECRET + "\n",
            "give --webhook-secret or --webhook-secret-stdin, not both",
        ),
        (
            ["--password-stdin", "--webhook-secret-stdin"],
            SECRET + "\n",
            "cannot be used together",
        ),
    ],
    ids=["too-short", "whitespace", "empty", "empty-stdin", "option-and-stdin", "two-on-stdin"],
)
def test_servers_add_refuses_a_bad_webhook_secret_and_adds_nothing(
    invoke: Invoke, extra: list[str], stdin: str | None, words: str
) -> None:
    result = invoke(
        *("servers", "add", "--name", "primary", "--host", "127.0.0.1", "--port", "2525"),
        *extra,
        stdin=stdin,
    )
    assert result.exit_code == 1
    assert words in result.stderr
    assert SECRET not in everything(result)
    db.session.expire_all()
    assert db.session.scalars(select(Relay)).all() == []


# --------------------------------------------------------------------------- servers edit


@pytest.fixture
def primary(add_relay: Any) -> Relay:
    """A relay with credentials and every setting away from its default."""
    add_relay("backup", NOWHERE)
    row: Relay = add_relay(
        "primary",
        NOWHERE,
        username="relay-user",
        password=PASSWORD,
        webhook_secret=SECRET,
        priority=5,
        weight=3,
        provider="mailersend",
        max_per_connection=7,
        max_rate=2.5,
        unknown_retries=1,
        maintenance_policy="hold",
        tls_verify=False,
    )
    return row


def test_servers_edit_changes_only_the_options_given(
    invoke: Invoke, app: Flask, primary: Relay
) -> None:
    before = columns("primary")
    result = invoke("servers", "edit", "primary", "--host", "smtp.example.net", "--port", "465")
    assert result.exit_code == 0, everything(result)
    assert result.stdout == "primary: updated (host, port)\n"
    after = columns("primary")
    assert (after["host"], after["port"]) == ("smtp.example.net", 465)
    untouched = {"host", "port", "updated_at"}
    assert {k: v for k, v in after.items() if k not in untouched} == {
        k: v for k, v in before.items() if k not in untouched
    }
    assert relays.endpoint(relay("primary"), box(app)).password == PASSWORD


def test_servers_edit_changes_every_setting_and_names_them(
    invoke: Invoke, app: Flask, primary: Relay
) -> None:
    result = invoke(
        *("servers", "edit", "primary", "--name", "main", "--security", "tls"),
        *("--username", "other-user", "--password-stdin", "--priority", "50"),
        *("--weight", "0", "--provider", "generic", "--max-per-connection", "100"),
        *("--max-rate", "10", "--unknown-retries", "0", "--tls-verify"),
        *("--maintenance-policy", "reroute", "--webhook-secret", "another-secret-42"),
        stdin="new-password-123\n",
    )
    assert result.exit_code == 0, everything(result)
    assert result.stdout == (
        "primary: updated (name, security, tls-verify, username, priority, weight, provider, "
        "max-per-connection, max-rate, unknown-retries, maintenance-policy, password, "
        "webhook-secret); now named main\n"
    )
    assert "new-password-123" not in everything(result)
    assert "another-secret-42" not in everything(result)
    row = relay("main")
    assert (row.security, row.tls_verify, row.username, row.priority) == (
        "tls",
        True,
        "other-user",
        50,
    )
    assert (row.weight, row.provider, row.max_per_connection, row.max_rate) == (
        0,
        "generic",
        100,
        10.0,
    )
    assert (row.unknown_retries, row.maintenance_policy) == (0, "reroute")
    assert relays.endpoint(row, box(app)).password == "new-password-123"
    assert row.webhook_secret_encrypted is not None
    assert box(app).decrypt(row.webhook_secret_encrypted) == "another-secret-42"


def test_servers_edit_sets_the_webhook_secret_from_stdin(
    invoke: Invoke, app: Flask, primary: Relay
) -> None:
    result = invoke(
        "servers", "edit", "primary", "--webhook-secret-stdin", stdin="fresh-secret-0042\n"
    )
    assert result.exit_code == 0, everything(result)
    assert result.stdout == "primary: updated (webhook-secret)\n"
    assert "fresh-secret-0042" not in everything(result)
    row = relay("primary")
    assert row.webhook_secret_encrypted is not None
    assert box(app).decrypt(row.webhook_secret_encrypted) == "fresh-secret-0042"


def test_servers_edit_with_an_empty_username_drops_the_password(
    invoke: Invoke, primary: Relay
) -> None:
    result = invoke("servers", "edit", "primary", "--username", "")
    assert result.exit_code == 0, everything(result)
    assert result.stdout == "primary: updated (username, password)\n"
    row = relay("primary")
    assert row.username is None and row.password_encrypted is None


def test_servers_edit_with_the_current_values_changes_nothing(
    invoke: Invoke, primary: Relay
) -> None:
    result = invoke("servers", "edit", "primary", "--weight", "3", "--no-tls-verify")
    assert result.exit_code == 0, everything(result)
    assert result.stdout == "primary: unchanged\n"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "70000"], "port 70000 is out of range (1-65535)"),
        (["--port", "0"], "port 0 is out of range (1-65535)"),
        (["--host", "smtp example"], "host 'smtp example' is not a host name or address"),
        (["--weight", "-1"], "weight must be at least 0"),
        (["--max-per-connection", "0"], "max per connection must be at least 1"),
        (["--max-rate", "0"], "max rate must be more than 0"),
        (["--name", "backup"], "a relay named 'backup' already exists"),
        (["--name", "x" * 65], "name must be 1 to 64 characters"),
        (["--webhook-secret", "short"], "webhook secret must be 8 to 256 characters"),
        (["--webhook-secret", ""], "--webhook-secret is empty"),
        (["--password", ""], "--password is empty"),
        (["--host", "new.example.net", "--webhook-secret", "a b c d e f"], "webhook secret"),
        ([], "nothing to change"),
    ],
    ids=[
        "port-too-high",
        "port-zero",
        "host-with-space",
        "negative-weight",
        "zero-per-connection",
        "zero-rate",
        "name-taken",
        "name-too-long",
        "secret-too-short",
        "secret-empty",
        "password-empty",
        "one-bad-of-two",
        "no-option",
    ],
)
def test_servers_edit_refuses_with_the_message_and_changes_nothing(
    invoke: Invoke, app: Flask, primary: Relay, args: list[str], words: str
) -> None:
    before = columns("primary")
    result = invoke("servers", "edit", "primary", *args)
    assert result.exit_code == 1
    assert f"Error: {words}" in result.stderr
    assert "Traceback" not in everything(result)
    assert SECRET not in everything(result) and PASSWORD not in everything(result)
    assert columns("primary") == before
    assert relays.endpoint(relay("primary"), box(app)).password == PASSWORD


def test_servers_edit_of_an_unknown_relay_is_refused(invoke: Invoke) -> None:
    result = invoke("servers", "edit", "ghost", "--port", "25")
    assert result.exit_code == 1
    assert "no relay named 'ghost'" in result.stderr


# --------------------------------------------------------------------------- drains, pause


def _held_drain(app: Flask, add_relay: Any, send: Any, invoke: Invoke) -> int:
    add_relay("primary", NOWHERE, maintenance_policy="hold")
    invoke("maintenance", "start", "primary")
    for _ in range(3):
        send()
    DeliveryEngine(db.engine, app.config["RELAYBOARD"]).run_pass()
    ended = invoke("maintenance", "end", "primary")
    assert "through drain 1" in ended.stdout
    return 1


def test_drains_list_pause_resume_cancel(
    app: Flask, add_relay: Any, send: Any, invoke: Invoke
) -> None:
    drain_id = _held_drain(app, add_relay, send, invoke)
    listed = invoke("drains", "list")
    assert listed.exit_code == 0
    assert listed.stdout.startswith("#1 primary running: 0% of 3 (released 0, sent 0")
    (row,) = json.loads(invoke("drains", "list", "--json").stdout)
    assert (row["id"], row["state"], row["backlog"], row["rate"]) == (1, "running", 3, 5.0)
    assert invoke("drains", "pause", str(drain_id)).stdout == "drain 1: paused\n"
    again = invoke("drains", "pause", str(drain_id))
    assert again.exit_code == 1 and "not running" in everything(again)
    assert invoke("drains", "resume", str(drain_id)).stdout == "drain 1: running\n"
    cancelled = invoke("drains", "cancel", str(drain_id))
    assert cancelled.stdout == "drain 1: cancelled; 3 message(s) stay held\n"
    unknown = invoke("drains", "cancel", "99")
    assert unknown.exit_code == 1 and "no drain 99" in everything(unknown)
    released = invoke("drains", "release", "--relay", "primary")
    assert released.stdout == "drain 2: releasing 3 held message(s)\n"
    assert invoke("drains", "release").stdout == "no held mail to release\n"


def test_pause_and_resume_all_delivery(app: Flask, invoke: Invoke) -> None:
    refused = invoke("pause", "--note", "  ")
    assert refused.exit_code == 1 and "say why" in everything(refused)
    assert invoke("pause", "--note", "ESP incident").stdout == "delivery paused\n"
    assert invoke("pause", "--note", "again").stdout == "delivery was already paused\n"
    assert invoke("resume").stdout == "delivery resumed\n"
    assert invoke("resume").stdout == "delivery was not paused\n"
