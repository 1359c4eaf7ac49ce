"""The JSON API contract: POST /api/send, GET /api/messages[/<id>], GET /healthz, and logs."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from app.db import db
from app.logs import JsonFormatter
from app.models import Event, Message
from app.services import api_keys
from app.services.delivery import DeliveryEngine

ATTACHMENT = bytes(range(256)) * 4  # binary, every byte value
RECEIVED = "from app1.internal (app1 [10.0.0.5]) by gw.example.com; Tue, 1 Jan 2030 00:00:00 +0000"
RAW = (
    "From: Shop <shop@example.com>\r\n"
    "To: Alice <alice@example.org>\r\n"
    "Cc: carol@example.org\r\n"
    "Bcc: dave@example.org\r\n"
    "Subject: Raw hello\r\n"
    "\r\n"
    "Hello from a raw message.\r\n"
)


def body(**fields: Any) -> dict[str, Any]:
    """A valid structured request body, with `fields` changed (None removes a field)."""
    base: dict[str, Any] = {
        "from": "Shop <shop@example.com>",
        "to": ["alice@example.org"],
        "subject": "Your order",
        "text": "Thanks! https://shop.example.com/orders/1",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def post(client: FlaskClient, headers: dict[str, str], payload: Any) -> TestResponse:
    return client.post("/api/send", json=payload, headers=headers)


def count(model: Any) -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(model)) or 0


def stored() -> int:
    """Messages in the database (enqueue writes the message row alone)."""
    return count(Message)


def error_of(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """Assert the documented error shape, status and code; return the error object."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    payload = response.get_json()
    assert set(payload) == {"error"}
    error: dict[str, Any] = payload["error"]
    assert set(error) == {"code", "message", "fields"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["fields"], dict)
    return error


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def row(pk: int) -> Message:
    db.session.expire_all()
    message = db.session.get(Message, pk)
    assert message is not None
    return message


# --------------------------------------------------------------------------- POST /api/send

FULL = body(
    to=["Alice <alice@example.org>"],
    cc=["carol@example.org"],
    bcc=[{"email": "dave@example.org", "name": "Dave"}],
    reply_to="Support <support@example.com>",
    html='<p>Thanks! <a href="https://shop.example.com/track?o=1">Track it</a></p>',
    attachments=[
        {
            "filename": "invoice.pdf",
            "content": base64.b64encode(ATTACHMENT).decode(),
            "content_type": "application/pdf",
        }
    ],
    headers={"X-Campaign": "spring-2030"},
    tags=["orders", "receipt"],
    priority="high",
    received=[RECEIVED],
)


def test_it_queues_a_structured_message_and_answers_202(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    response = post(client, auth, FULL)
    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    assert set(answer) == {"id", "status", "message_id"}
    assert answer["status"] == "queued"
    assert answer["message_id"].startswith("<") and answer["message_id"].endswith("@example.com>")
    assert response.headers["Location"].endswith(f"/api/messages/{answer['id']}")
    assert response.headers["Location"] == f"/api/messages/{answer['id']}"
    assert response.headers["Content-Length"] == str(len(response.data))
    message = row(answer["id"])
    assert message.status == "queued" and message.message_id == answer["message_id"]
    assert message.recipients == ["alice@example.org", "carol@example.org", "dave@example.org"]
    assert message.envelope_from == "shop@example.com"
    assert message.priority == 0  # high
    assert message.tags == ["orders", "receipt"]
    assert message.subject == "Your order"
    assert b"\r\nBcc:" not in message.data and b"dave@example.org" not in message.data
    assert count(Event) == 0  # the row is the record that it was queued
    shown = client.get(f"/api/messages/{answer['id']}", headers=auth).get_json()
    assert [(e["type"], e["detail"]) for e in shown["events"]] == [
        ("queued", f"3 recipient(s), {message.size} bytes")
    ]
    assert shown["events"][0]["at"] == shown["created_at"]


def test_the_relay_receives_the_structured_message_as_queued(
    client: FlaskClient,
    auth: dict[str, str],
    smtp_server: Any,
    add_relay: Any,
    engine: DeliveryEngine,
) -> None:
    add_relay("primary", smtp_server)
    queued = post(client, auth, FULL).get_json()
    assert engine.run_pass().sent == 1
    (got,) = smtp_server.wait_for(1)
    assert got.mail_from == "shop@example.com"
    assert sorted(got.rcpt_tos) == ["alice@example.org", "carol@example.org", "dave@example.org"]
    assert got.message_id == queued["message_id"]
    message = parse(got.data)
    assert message.keys()[0] == "Received"
    assert " ".join(str(message["Received"]).split()) == RECEIVED
    assert message["Bcc"] is None and b"dave@example.org" not in got.data
    assert message["X-Campaign"] == "spring-2030"
    assert message["Reply-To"] == "Support <support@example.com>"
    assert message["Cc"] == "carol@example.org"
    assert message["To"] == "Alice <alice@example.org>"
    (attachment,) = message.iter_attachments()
    assert attachment.get_filename() == "invoice.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == ATTACHMENT
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and "shop.example.com/orders/1" in text.get_content()
    assert html is not None and "track?o=1" in html.get_content()


def test_a_raw_message_takes_its_recipients_from_to_cc_and_bcc(
    client: FlaskClient,
    auth: dict[str, str],
    smtp_server: Any,
    add_relay: Any,
    engine: DeliveryEngine,
) -> None:
    add_relay("primary", smtp_server)
    response = post(client, auth, {"raw": RAW, "tags": ["raw"]})
    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    message = row(answer["id"])
    assert message.recipients == ["alice@example.org", "carol@example.org", "dave@example.org"]
    assert message.envelope_from == "shop@example.com"
    assert message.subject == "Raw hello" and message.tags == ["raw"]
    engine.run_pass()
    (got,) = smtp_server.wait_for(1)
    assert sorted(got.rcpt_tos) == ["alice@example.org", "carol@example.org", "dave@example.org"]
    assert got.message_id == answer["message_id"]
    received = parse(got.data)
    assert received["Bcc"] is None and b"dave@example.org" not in got.data
    assert received["Subject"] == "Raw hello"
    assert got.data.endswith(b"\r\n\r\nHello from a raw message.\r\n")  # body kept as sent


def test_to_overrides_the_recipients_of_a_raw_message(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    response = post(client, auth, {"raw": RAW, "to": ["zed@example.net"]})
    assert response.status_code == 202, response.get_json()
    message = row(response.get_json()["id"])
    assert message.recipients == ["zed@example.net"]
    assert b"To: Alice <alice@example.org>" in message.data  # the header is kept as sent


def test_an_idempotency_key_replays_the_first_answer_and_stores_one_message(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    headers = {**auth, "Idempotency-Key": "order-1"}
    first = post(client, headers, body())
    again = post(client, headers, body())
    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert stored() == 1


def test_an_idempotency_key_reused_with_another_body_is_a_conflict(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    headers = {**auth, "Idempotency-Key": "order-1"}
    first = post(client, headers, body())
    assert first.status_code == 202
    error = error_of(post(client, headers, body(subject="Another")), 409, "idempotency_conflict")
    assert "Idempotency-Key" in error["message"]
    assert stored() == 1
    assert row(first.get_json()["id"]).subject == "Your order"


@pytest.mark.parametrize("key", ["k" * 256, "tab\tinside"], ids=["too-long", "control-char"])
def test_it_refuses_a_bad_idempotency_key(
    client: FlaskClient, auth: dict[str, str], key: str
) -> None:
    response = post(client, {**auth, "Idempotency-Key": key}, body())
    error = error_of(response, 400, "invalid_idempotency_key")
    assert "Idempotency-Key" in error["message"]
    assert stored() == 0


BAD_INPUT = [
    # (id, request body, the one field blamed, words in that field's problem)
    ("bad-address", body(to=["not-an-address"]), "to.0.email", "@"),
    ("crlf-subject", body(subject="Hi\r\nBcc: eve@evil.example"), "subject", "line break"),
    (
        "crlf-header-value",
        body(headers={"X-Note": "a\r\nBcc: eve@evil.example"}),
        "headers.X-Note",
        "line break",
    ),
    (
        "crlf-display-name",
        body(to=[{"email": "alice@example.org", "name": "Alice\r\nBcc: eve@evil.example"}]),
        "to.0.name",
        "line break",
    ),
    (
        "crlf-display-name-in-string",
        body(to=["Alice\nBcc: eve@evil.example <alice@example.org>"]),
        "to.0.name",
        "line break",
    ),
    (
        "bad-base64",
        body(attachments=[{"filename": "a.bin", "content": "not base64!"}]),
        "attachments.0.content",
        "base64",
    ),
    ("unknown-field", body(colour="red"), "colour", "unknown field"),
    ("missing-recipients", body(to=None), "to", "recipient"),
    ("raw-with-subject", {"raw": RAW, "subject": "Hi"}, "subject", "raw"),
    ("structural-header", body(headers={"Bcc": "eve@evil.example"}), "headers.Bcc", "bcc"),
    ("missing-from", body(**{"from": None}), "from", "required"),
    ("bad-priority", body(priority="urgent"), "priority", "high"),
]


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_it_refuses_invalid_input_and_stores_nothing(
    client: FlaskClient, auth: dict[str, str], payload: Any, field: str, words: str
) -> None:
    error = error_of(post(client, auth, payload), 400, "invalid")
    assert list(error["fields"]) == [field], error
    assert words.lower() in error["fields"][field].lower(), error
    assert stored() == 0


def test_it_refuses_malformed_json_and_stores_nothing(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    response = client.post(
        "/api/send",
        data='{"from": "shop@example.com", "to": [',
        content_type="application/json",
        headers=auth,
    )
    error = error_of(response, 400, "malformed_json")
    assert "not valid JSON" in error["message"]
    assert list(error["fields"]) == ["body"]
    assert stored() == 0


def test_it_refuses_a_raw_message_without_a_from_header(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    raw = "To: alice@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    error = error_of(post(client, auth, {"raw": raw}), 400, "invalid")
    assert "From" in error["message"] and "From" in error["fields"]["raw"]
    assert stored() == 0


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("text/plain", json.dumps(body())),
        ("application/x-www-form-urlencoded", "from=shop%40example.com&to=alice%40example.org"),
        (None, json.dumps(body())),
    ],
    ids=["text-plain", "form", "no-content-type"],
)
def test_it_refuses_a_body_that_is_not_json(
    client: FlaskClient, auth: dict[str, str], content_type: str | None, data: str
) -> None:
    headers = dict(auth)
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/api/send", data=data, headers=headers)
    error = error_of(response, 415, "unsupported_media_type")
    assert "application/json" in error["message"]
    assert stored() == 0


@pytest.mark.parametrize(
    ("authorization", "words"),
    [
        (None, "Authorization: Bearer"),
        ("Basic dXNlcjpwYXNz", "Authorization: Bearer"),
        ("Bearer ", "Authorization: Bearer"),
        ("Bearer rb_not-a-real-key", "not valid"),
        ("Bearer something-else", "not valid"),
    ],
    ids=["missing", "basic", "empty-bearer", "unknown-key", "foreign-key"],
)
def test_it_refuses_a_request_without_a_valid_key(
    client: FlaskClient, authorization: str | None, words: str
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    error = error_of(post(client, headers, body()), 401, "unauthorized")
    assert words in error["message"]
    assert stored() == 0


def test_it_refuses_a_revoked_key(client: FlaskClient, auth: dict[str, str]) -> None:
    assert post(client, auth, body()).status_code == 202
    api_keys.revoke("test-app")
    error = error_of(post(client, auth, body()), 401, "unauthorized")
    assert "revoked" in error["message"]
    assert client.get("/api/messages", headers=auth).status_code == 401
    assert stored() == 1


def test_a_live_key_is_looked_up_once_a_second_not_once_a_request(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    """The gain of the key trust cache (api_keys.LIVE_FOR): without it every request costs a
    lookup, about 40 % more instructions per POST /api/send (docs/benchmarks.md)."""
    from sqlalchemy import event

    lookups: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "api_keys" in statement:
            lookups.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        for _ in range(20):
            assert post(client, auth, body()).status_code == 202
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert len(lookups) <= 1, f"{len(lookups)} lookups of the key for 20 requests"


def test_a_send_stays_within_its_budget_of_python_calls(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    """The pieces kept for speed earn their place on this path (docs/benchmarks.md): the key
    trust cache (+40 % instructions without it), the direct use of `limits` (Flask-Limiter:
    +36 %) and the hand-written MIME serialiser (email.message: 5 times the instructions).
    Python calls per request do not vary between runs; any of those gone blows the budget.
    The measured count was 906 (test client included)."""
    import sys

    for _ in range(3):  # caches, compiled statements, the trusted key
        assert post(client, auth, body()).status_code == 202
    calls = 0

    def count(_frame: Any, event: str, _arg: Any) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        response = post(client, auth, body())
    finally:
        sys.setprofile(None)
    assert response.status_code == 202
    assert calls < 1100, f"{calls} Python calls for one POST /api/send"


class TestTheSizeLimit:
    """RELAYBOARD_MAX_MESSAGE_BYTES=2048: the message limit, and the request limit above it."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, str]:
        return {"RELAYBOARD_MAX_MESSAGE_BYTES": "2048"}

    @pytest.mark.parametrize(
        "payload",
        [
            body(text="x" * 3000),
            body(text="x" * 1200, html="<p>" + "y" * 1200 + "</p>"),
            body(
                attachments=[
                    {"filename": "a.bin", "content": base64.b64encode(b"z" * 1800).decode()}
                ]
            ),
            {"raw": RAW.replace("Hello", "Hello " + "w " * 1500)},
        ],
        ids=["text", "text-and-html", "attachment", "raw"],
    )
    def test_it_refuses_a_message_over_the_limit(
        self, client: FlaskClient, auth: dict[str, str], payload: dict[str, Any]
    ) -> None:
        error = error_of(post(client, auth, payload), 413, "too_large")
        assert "2048" in error["message"]
        assert stored() == 0

    def test_it_refuses_a_request_body_over_the_limit(
        self, client: FlaskClient, auth: dict[str, str]
    ) -> None:
        error = error_of(post(client, auth, body(text="x" * 200_000)), 413, "too_large")
        assert "at most 2048 bytes" in error["message"]
        assert stored() == 0

    def test_it_accepts_a_message_under_the_limit(
        self, client: FlaskClient, auth: dict[str, str]
    ) -> None:
        response = post(client, auth, body(text="x" * 1000))
        assert response.status_code == 202, response.get_json()
        assert row(response.get_json()["id"]).size <= 2048


# --------------------------------------------------------------------------- GET /api/messages


def test_a_message_shows_its_attempts_events_and_links_after_a_failover(
    client: FlaskClient,
    auth: dict[str, str],
    send: Any,
    refusing_server: Any,
    smtp_server: Any,
    add_relay: Any,
    engine: DeliveryEngine,
) -> None:
    add_relay("primary", refusing_server, priority=1)
    add_relay("backup", smtp_server, priority=2)
    queued = send(
        to=["Alice <alice@example.org>"],
        html='<a href="https://shop.example.com/track?o=1">Track</a> '
        '<img src="https://cdn.example.com/logo.png"> <a href="mailto:help@example.com">x</a>',
        tags=["orders"],
        priority="low",
    )
    engine.run_pass()
    smtp_server.wait_for(1)
    response = client.get(f"/api/messages/{queued['id']}", headers=auth)
    assert response.status_code == 200
    got = response.get_json()
    assert got["id"] == queued["id"]
    assert got["status"] == "sent"
    assert got["message_id"] == queued["message_id"]
    assert got["subject"] == "Your order"
    assert got["from"] == "Shop <shop@example.com>"
    assert got["to"] == ["Alice <alice@example.org>"]
    assert got["priority"] == "low"
    assert got["tags"] == ["orders"]
    assert got["relay"] == "backup"
    assert got["created_at"].endswith("Z") and got["sent_at"].endswith("Z")
    assert got["created_at"] <= got["sent_at"]
    attempts = got["attempts"]
    assert [(a["relay"], a["outcome"]) for a in attempts] == [
        ("primary", "failover"),
        ("backup", "sent"),
    ]
    for attempt in attempts:
        assert {"at", "relay", "code", "enhanced_status", "response", "duration_ms"} <= set(attempt)
        assert attempt["at"].endswith("Z") and attempt["duration_ms"] >= 0
    assert attempts[0]["code"] is None and "refused" in attempts[0]["response"]
    assert attempts[1]["code"] == 250
    events = got["events"]
    assert [e["type"] for e in events] == ["queued", "failover", "sent"]
    assert all({"at", "type", "detail"} <= set(e) for e in events)
    failover = events[1]
    assert "primary" in failover["detail"] and "backup" in failover["detail"]
    assert got["links"] == [
        "https://shop.example.com/orders/1",
        "https://shop.example.com/track?o=1",
        "https://cdn.example.com/logo.png",
    ]


def test_an_unknown_message_is_404(client: FlaskClient, auth: dict[str, str]) -> None:
    error = error_of(client.get("/api/messages/999", headers=auth), 404, "not_found")
    assert "999" in error["message"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [("status=sent", ["sent"]), ("status=queued", ["queued"]), ("", ["queued", "sent"])],
    ids=["sent", "queued", "all"],
)
def test_the_list_filters_by_status_newest_first(
    client: FlaskClient,
    auth: dict[str, str],
    send: Any,
    smtp_server: Any,
    add_relay: Any,
    engine: DeliveryEngine,
    query: str,
    expected: list[str],
) -> None:
    add_relay("primary", smtp_server)
    sent = send(subject="sent")
    engine.run_pass()
    smtp_server.wait_for(1)
    queued = send(subject="queued")
    ids = {"sent": sent["id"], "queued": queued["id"]}
    response = client.get(f"/api/messages?{query}", headers=auth)
    assert response.status_code == 200
    listed = response.get_json()["messages"]
    assert [m["id"] for m in listed] == [ids[s] for s in expected]
    assert [m["status"] for m in listed] == expected
    assert [m["subject"] for m in listed] == expected


def test_a_key_reads_and_lists_only_the_messages_it_sent(
    client: FlaskClient, auth: dict[str, str], send: Any, app: Any
) -> None:
    from app.domain import mime
    from app.services import queue

    mine = send(subject="mine")
    _, other_key = api_keys.create("billing")
    other = {"Authorization": f"Bearer {other_key}"}
    theirs = post(client, other, body(subject="theirs")).get_json()
    spec = mime.MessageSpec(
        mime.Mailbox("ops@example.com"), [mime.Mailbox("me@example.org")], [], [], None,
        "dashboard test", "hi", None, [], {}, [],
    )  # fmt: skip
    keyless = queue.enqueue(mime.build_message(spec, max_bytes=10_000)).id  # a test email
    # Each key: its own message, 404 for the other's and for the dashboard's.
    for headers, own, foreign in ((auth, mine, theirs), (other, theirs, mine)):
        assert client.get(f"/api/messages/{own['id']}", headers=headers).status_code == 200
        for hidden in (foreign["id"], keyless):
            error_of(client.get(f"/api/messages/{hidden}", headers=headers), 404, "not_found")
        listed = client.get("/api/messages", headers=headers).get_json()["messages"]
        assert [m["id"] for m in listed] == [own["id"]]
    # A read-all key reads and lists every message, and sends too.
    _, support_key = api_keys.create("support", scope="read-all")
    support = {"Authorization": f"Bearer {support_key}"}
    own = post(client, support, body(subject="support's own")).get_json()
    listed = client.get("/api/messages", headers=support).get_json()["messages"]
    assert [m["id"] for m in listed] == [own["id"], keyless, theirs["id"], mine["id"]]
    assert client.get(f"/api/messages/{keyless}", headers=support).status_code == 200


def test_a_change_of_scope_takes_effect_at_once(
    client: FlaskClient, auth: dict[str, str], send: Any
) -> None:
    _, other_key = api_keys.create("billing")
    other = {"Authorization": f"Bearer {other_key}"}
    theirs = post(client, other, body()).get_json()
    assert client.get(f"/api/messages/{theirs['id']}", headers=auth).status_code == 404
    api_keys.set_scope("test-app", "read-all")
    assert client.get(f"/api/messages/{theirs['id']}", headers=auth).status_code == 200
    api_keys.set_scope("test-app", "send")
    assert client.get(f"/api/messages/{theirs['id']}", headers=auth).status_code == 404


@pytest.mark.parametrize("pk", [2**63, 10**30])
def test_an_id_beyond_the_integer_range_is_404(
    client: FlaskClient, auth: dict[str, str], pk: int
) -> None:
    error_of(client.get(f"/api/messages/{pk}", headers=auth), 404, "not_found")


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=bogus", "status"), ("status=SENT", "status"), ("limit=0", "limit")],
)
def test_the_list_refuses_a_bad_query(
    client: FlaskClient, auth: dict[str, str], query: str, field: str
) -> None:
    error = error_of(client.get(f"/api/messages?{query}", headers=auth), 400, "invalid")
    assert list(error["fields"]) == [field]


def test_healthz_reports_the_database_queue_and_relays(
    client: FlaskClient, send: Any, smtp_server: Any, add_relay: Any
) -> None:
    add_relay("primary", smtp_server)
    add_relay("spare", smtp_server, enabled=False)
    send()
    response = client.get("/healthz")  # no API key needed
    assert response.status_code == 200 and response.is_json
    assert response.get_json() == {
        "status": "ok",
        "database": "ok",
        "queued": 1,
        "enabled_relays": 1,
    }


# --------------------------------------------------------------------------- logs

BODY_MARKER = "body-marker-must-not-be-logged"
PASSWORD = "hunter2-relay-password"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class TestDeliveryLogs:
    """RELAYBOARD_LOG_FORMAT=json at INFO: one JSON line per attempt and per state change."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, str]:
        return {"RELAYBOARD_LOG_FORMAT": "json", "RELAYBOARD_LOG_LEVEL": "INFO"}

    @pytest.fixture
    def lines(self, app: Any) -> Iterator[list[str]]:
        logger = logging.getLogger("relayboard")
        handler = _Lines()
        logger.addHandler(handler)
        try:
            yield handler.lines
        finally:
            logger.removeHandler(handler)

    def test_the_app_logs_json_lines(self, app: Any) -> None:
        logger = logging.getLogger("relayboard")
        ours = [h for h in logger.handlers if getattr(h, "_relayboard", False)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
        assert logger.level == logging.INFO

    def test_each_attempt_and_state_change_is_one_json_line_without_secrets(
        self,
        lines: list[str],
        send: Any,
        refusing_server: Any,
        smtp_server_factory: Any,
        add_relay: Any,
        engine: DeliveryEngine,
    ) -> None:
        backup = smtp_server_factory(auth=("relay-user", PASSWORD))
        add_relay("primary", refusing_server, priority=1, username="relay-user", password=PASSWORD)
        add_relay("backup", backup, priority=2, username="relay-user", password=PASSWORD)
        queued = send(text=f"{BODY_MARKER} https://shop.example.com/")
        engine.run_pass()
        backup.wait_for(1)
        records = [json.loads(line) for line in lines]  # every line is JSON
        mine = [r for r in records if r.get("mid") == queued["id"]]
        attempts = [r for r in mine if r["event"] == "attempt"]
        assert [(a["relay"], a["outcome"]) for a in attempts] == [
            ("primary", "failover"),
            ("backup", "sent"),
        ]
        assert [a["code"] for a in attempts] == [None, 250]
        assert all(isinstance(a["duration_ms"], int | float) for a in attempts)
        changes = [r["status"] for r in mine if "status" in r]
        assert changes == ["queued", "sent"]
        for line in lines:
            assert BODY_MARKER not in line and PASSWORD not in line


def test_the_location_is_a_uri_under_any_mount_point(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    # Mounted under a prefix with a space and an accent: the Location is percent-encoded.
    response = client.post(
        "/api/send", json=body(), headers=auth, base_url="http://localhost/mail%20gate/%C3%A9/"
    )
    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    assert response.headers["Location"] == f"/mail%20gate/%C3%A9/api/messages/{answer['id']}"
